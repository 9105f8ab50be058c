package client

import (
	"bytes"
	"context"
	"errors"
	"os"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// LoadKey reads a device key file the way the server does: its bytes with
// trailing whitespace trimmed (a key written by echo keeps no newline).
func LoadKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b = bytes.TrimRight(b, " \t\r\n")
	if len(b) == 0 {
		return nil, errors.New("key file " + path + " is empty")
	}
	return b, nil
}

// DefaultTokenTTL is the lifetime of a token signed with ttl 0: servers
// refuse tokens without exp unless told otherwise.
const DefaultTokenTTL = time.Hour

// SignToken returns an HS256 JWT for device (sub) signed with key, valid
// for ttl (0: DefaultTokenTTL; negative: already expired, for tests).
func SignToken(key []byte, device string, ttl time.Duration) (string, error) {
	now := time.Now()
	if ttl == 0 {
		ttl = DefaultTokenTTL
	}
	claims := jwt.RegisteredClaims{Subject: device, IssuedAt: jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl))}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(key)
}

// KeyTokenFunc signs a fresh token for every connection, for Config.TokenFunc.
func KeyTokenFunc(key []byte, device string, ttl time.Duration) func(context.Context) (string, error) {
	return func(context.Context) (string, error) { return SignToken(key, device, ttl) }
}
