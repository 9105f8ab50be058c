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

// SignToken returns an HS256 JWT for device (sub) signed with key, valid
// for ttl (0: no expiry; negative: already expired, for tests).
func SignToken(key []byte, device string, ttl time.Duration) (string, error) {
	now := time.Now()
	claims := jwt.RegisteredClaims{Subject: device, IssuedAt: jwt.NewNumericDate(now)}
	if ttl != 0 {
		claims.ExpiresAt = jwt.NewNumericDate(now.Add(ttl))
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(key)
}

// KeyTokenFunc signs a fresh token for every connection, for Config.TokenFunc.
func KeyTokenFunc(key []byte, device string, ttl time.Duration) func(context.Context) (string, error) {
	return func(context.Context) (string, error) { return SignToken(key, device, ttl) }
}
