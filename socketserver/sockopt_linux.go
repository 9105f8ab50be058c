package socketserver

import (
	"crypto/tls"
	"net"
	"syscall"
	"time"
)

// tcpUserTimeout is TCP_USER_TIMEOUT (linux/tcp.h), absent from syscall.
const tcpUserTimeout = 0x12

// setUserTimeout makes the kernel end nc's connection once written data
// stays unacknowledged for d: how a server that only writes finds a dead peer.
func setUserTimeout(nc net.Conn, d time.Duration) {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout, int(d.Milliseconds()))
	})
}
