package socketserver

import (
	"errors"
	"fmt"

	"github.com/golang-jwt/jwt/v5"
)

// MinAuthKeyBytes is the shortest device key the server accepts: HS256
// wants a key at least as long as its 32-byte hash.
const MinAuthKeyBytes = 32

// authenticator checks HELLO tokens: HS256 JWTs signed with the cluster's
// device key whose sub is the device and that carry exp, unless tokens
// without exp are allowed.
type authenticator struct {
	key        []byte
	insecure   bool
	allowNoExp bool
}

func newAuthenticator(key []byte, insecure, allowNoExp bool) (*authenticator, error) {
	if !insecure && len(key) == 0 {
		return nil, errors.New("a device key is required (--auth-key-file), or --insecure-no-auth for development")
	}
	if !insecure && len(key) < MinAuthKeyBytes {
		return nil, fmt.Errorf("the device key in --auth-key-file is %d bytes, below the %d-byte minimum (create one with: openssl rand -hex 32)", len(key), MinAuthKeyBytes)
	}
	return &authenticator{key: key, insecure: insecure, allowNoExp: allowNoExp}, nil
}

func (a *authenticator) verify(device, token string) error {
	if a.insecure {
		return nil
	}
	opts := []jwt.ParserOption{jwt.WithValidMethods([]string{"HS256"}), jwt.WithSubject(device)}
	if !a.allowNoExp {
		opts = append(opts, jwt.WithExpirationRequired())
	}
	_, err := jwt.NewParser(opts...).Parse(token, func(*jwt.Token) (any, error) { return a.key, nil })
	if err != nil {
		return fmt.Errorf("token rejected: %w", err)
	}
	return nil
}

// subjectOf is the sub claim of token, unverified: it names the device
// when a request names none, and verify checks it like any other.
func subjectOf(token string) string {
	if token == "" {
		return ""
	}
	var c jwt.RegisteredClaims
	if _, _, err := jwt.NewParser().ParseUnverified(token, &c); err != nil {
		return ""
	}
	return c.Subject
}
