//go:build !linux

package socketserver

import (
	"net"
	"time"
)

// setUserTimeout: elsewhere a dead peer is found by the write timeout only.
func setUserTimeout(net.Conn, time.Duration) {}
