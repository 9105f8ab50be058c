package client_test

import (
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/socketcluster/socketcluster/socketserver/client"
)

// Servers refuse tokens without exp: a token signed with ttl 0 expires
// after DefaultTokenTTL.
func TestSignTokenAlwaysExpires(t *testing.T) {
	key := []byte("a-device-key-of-at-least-32-bytes")
	tok, err := client.SignToken(key, "pos-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	claims := jwt.RegisteredClaims{}
	if _, err := jwt.NewParser(jwt.WithExpirationRequired(), jwt.WithSubject("pos-1")).
		ParseWithClaims(tok, &claims, func(*jwt.Token) (any, error) { return key, nil }); err != nil {
		t.Fatalf("token signed with ttl 0: %v", err)
	}
	if left := time.Until(claims.ExpiresAt.Time); left <= client.DefaultTokenTTL-time.Minute || left > client.DefaultTokenTTL {
		t.Fatalf("token expires in %s, want about %s", left, client.DefaultTokenTTL)
	}
}
