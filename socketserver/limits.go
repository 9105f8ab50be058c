package socketserver

import "syscall"

// fdReserve keeps descriptors free for Redis, the admin API and listeners,
// so that at the process's open-file ceiling new devices get server_full
// instead of the server failing to reach its store.
const fdReserve = 128

// refusalReserve is how many connections over the limit may be refused at
// a time (an ERROR or an HTTP 503 still to be written); beyond it they are
// closed at once, so that refusals cannot eat the descriptors kept in
// reserve. Connections in a handshake count against the limit.
const refusalReserve = fdReserve / 4

// connectionCeiling caps the configured connection limit (0 = unlimited)
// below the open-file limit. Go raises the soft limit to the hard one at
// start, so Cur is what the process really has.
func connectionCeiling(configured int) int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<30 {
		return configured
	}
	ceiling := max(int(rl.Cur)-fdReserve, 1)
	if configured == 0 || configured > ceiling {
		return ceiling
	}
	return configured
}
