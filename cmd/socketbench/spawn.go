package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// process is a child the tool started and must stop (by its PID) at the end.
type process struct {
	name string
	cmd  *exec.Cmd
}

func (p *process) kill() {
	if p.cmd.Process != nil {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startRedis runs a throwaway redis-server on a free loopback port.
func startRedis(dir string) (*process, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "",
		"--appendonly", "no", "--dir", dir, "--maxclients", "10000")
	setParentDeathSignal(cmd)
	p := &process{name: "redis-server", cmd: cmd}
	ready, err := startAndWatch(p, regexp.MustCompile(`Ready to accept connections`), cmd.StdoutPipe)
	if err != nil {
		return nil, "", err
	}
	if _, ok := <-ready; !ok {
		p.kill()
		return nil, "", fmt.Errorf("redis-server did not start")
	}
	return p, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil
}

// serverAddrs are the listeners a spawned socketserver logged.
type serverAddrs struct{ TCP, WS, GRPC, MQTT, Admin string }

var listeningRE = regexp.MustCompile(`listening (tcp|ws|grpc|mqtt|admin)=([^\s"]+)`)

// startServer runs the socketserver binary on the addresses in at (empty
// ones: a loopback port the kernel picks) and returns the addresses it logged.
func startServer(bin, name, redisAddr, prefix string, at serverAddrs, extra []string) (*process, serverAddrs, error) {
	or := func(a string) string {
		if a == "" {
			return "127.0.0.1:0"
		}
		return a
	}
	args := append([]string{"--tcp-addr", or(at.TCP), "--ws-addr", or(at.WS), "--grpc-addr", or(at.GRPC), "--mqtt-addr", or(at.MQTT), "--admin-addr", or(at.Admin),
		"--redis-addr", redisAddr, "--redis-prefix", prefix, "--pod-name", name, "--insecure-no-auth"}, extra...)
	cmd := exec.Command(bin, args...)
	setParentDeathSignal(cmd)
	p := &process{name: name, cmd: cmd}
	lines, err := startAndWatch(p, listeningRE, cmd.StderrPipe)
	if err != nil {
		return nil, serverAddrs{}, err
	}
	var a serverAddrs
	timeout := time.After(15 * time.Second)
	for a.TCP == "" || a.WS == "" || a.GRPC == "" || a.MQTT == "" || a.Admin == "" {
		select {
		case m, ok := <-lines:
			if !ok {
				p.kill()
				return nil, a, fmt.Errorf("%s exited before listening", name)
			}
			switch m[1] {
			case "tcp":
				a.TCP = m[2]
			case "ws":
				a.WS = m[2]
			case "grpc":
				a.GRPC = m[2]
			case "mqtt":
				a.MQTT = m[2]
			case "admin":
				a.Admin = m[2]
			}
		case <-timeout:
			p.kill()
			return nil, a, fmt.Errorf("%s did not log its listeners", name)
		}
	}
	return p, a, nil
}

// startAndWatch starts p and sends the submatches of re found in its output;
// the channel closes when the output ends. The rest of the output is dropped.
func startAndWatch(p *process, re *regexp.Regexp, pipe func() (io.ReadCloser, error)) (<-chan []string, error) {
	r, err := pipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", p.name, err)
	}
	ch := make(chan []string, 8)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case ch <- m:
				default:
				}
			}
		}
	}()
	return ch, nil
}

// scrape reads the gauges the table needs from a server's /metrics.
func scrape(ctx context.Context, admin string) (map[string]float64, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			continue
		}
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i] // sum the series of a metric
		}
		out[name] += v
	}
	return out, sc.Err()
}

func tempDir() (string, error) { return os.MkdirTemp("", "socketbench-") }
