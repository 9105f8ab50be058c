//go:build !linux

package main

import (
	"os/exec"
	"syscall"
)

func setParentDeathSignal(*exec.Cmd) {}

func bindNoPort(_, _ string, _ syscall.RawConn) error { return nil }

func cpuSeconds() float64 { return 0 }

func rss() float64 { return 0 }
