package socketserver

import (
	"errors"
	"fmt"

	"github.com/golang-jwt/jwt/v5"
)

// authenticator checks HELLO tokens: HS256 JWTs signed with the cluster's
// device key whose sub is the device.
type authenticator struct {
	key      []byte
	insecure bool
}

func newAuthenticator(key []byte, insecure bool) (*authenticator, error) {
	if !insecure && len(key) == 0 {
		return nil, errors.New("a device key is required (--auth-key-file), or --insecure-no-auth for development")
	}
	return &authenticator{key: key, insecure: insecure}, nil
}

func (a *authenticator) verify(device, token string) error {
	if a.insecure {
		return nil
	}
	p := jwt.NewParser(jwt.WithValidMethods([]string{"HS256"}), jwt.WithSubject(device))
	_, err := p.Parse(token, func(*jwt.Token) (any, error) { return a.key, nil })
	if err != nil {
		return fmt.Errorf("token rejected: %w", err)
	}
	return nil
}
