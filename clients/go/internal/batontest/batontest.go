// Package batontest starts real redis-server and baton processes for the client's tests.
package batontest

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const startPatience = 30 * time.Second

// Redis is a private, non-persistent redis-server on a free loopback port.
type Redis struct {
	Port    int
	process *process
}

// StartRedis starts redis-server and waits until it accepts connections; it is killed when
// the test ends.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	port := FreePort(t)
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no")
	redisProcess, err := start(cmd)
	if err != nil {
		t.Fatalf("starting redis-server: %v", err)
	}
	redis := &Redis{Port: port, process: redisProcess}
	t.Cleanup(redis.Stop)
	deadline := time.Now().Add(startPatience)
	for {
		conn, err := net.Dial("tcp", redis.Addr())
		if err == nil {
			conn.Close()
			return redis
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server did not listen on %s: %v", redis.Addr(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Addr is host:port.
func (r *Redis) Addr() string { return fmt.Sprintf("127.0.0.1:%d", r.Port) }

// URL is the redis:// URL baton takes.
func (r *Redis) URL() string { return "redis://" + r.Addr() }

// Stop kills redis-server (SIGKILL: an outage, not a shutdown) and reaps it; idempotent.
func (r *Redis) Stop() { r.process.stop(syscall.SIGKILL) }

// Signal sends signal to redis-server (SIGSTOP freezes it: connections stay open and
// commands queue up unanswered; SIGCONT resumes it) without waiting for anything.
func (r *Redis) Signal(signal syscall.Signal) {
	if !r.process.exited() {
		_ = r.process.cmd.Process.Signal(signal)
	}
}

// Baton is one baton server process.
type Baton struct {
	// Addr is the gRPC address, read from baton's "serving" log line.
	Addr string
	// MetricsAddr is the Prometheus endpoint's address (host:port), from the same line.
	MetricsAddr string
	logPath     string
	process     *process
}

// StartBaton starts target/debug/baton (or $BATON_BIN) on redis, listening on listen
// ("127.0.0.1:0" for any free port), with extraArgs after the harness's own flags (which
// they must not repeat: --listen, --metrics-listen, --log-format, --redis-url,
// --shutdown-delay 200ms), and waits for its address; it is killed when the test ends.
func StartBaton(t testing.TB, redis *Redis, listen string, extraArgs ...string) *Baton {
	t.Helper()
	logFile, err := os.Create(filepath.Join(t.TempDir(), "baton.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	// Logs go to a file, not a pipe: a pipe nobody drains would block baton once full.
	args := append([]string{"--listen", listen, "--metrics-listen", "127.0.0.1:0",
		"--log-format", "json", "--redis-url", redis.URL(), "--shutdown-delay", "200ms"}, extraArgs...)
	cmd := exec.Command(batonBinary(t), args...)
	cmd.Stderr = logFile
	cmd.Stdout = logFile
	batonProcess, err := start(cmd)
	if err != nil {
		t.Fatalf("starting baton: %v", err)
	}
	baton := &Baton{logPath: logFile.Name(), process: batonProcess}
	t.Cleanup(func() { batonProcess.stop(syscall.SIGKILL) })
	grpcAddr := regexp.MustCompile(`"grpc_addr":"([^"]+)"`)
	metricsAddr := regexp.MustCompile(`"metrics_addr":"([^"]+)"`)
	deadline := time.Now().Add(startPatience)
	for time.Now().Before(deadline) {
		logged := readFile(logFile.Name())
		if match := grpcAddr.FindSubmatch(logged); match != nil {
			baton.Addr = string(match[1])
			if metrics := metricsAddr.FindSubmatch(logged); metrics != nil {
				baton.MetricsAddr = string(metrics[1])
			}
			return baton
		}
		if batonProcess.exited() {
			t.Fatalf("baton exited before serving:\n%s", readFile(logFile.Name()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("baton did not log its grpc_addr within %s:\n%s", startPatience, readFile(logFile.Name()))
	return nil
}

// Counter sums the samples of the Prometheus counter name (e.g. "baton_grpc_requests_total")
// on the replica's /metrics whose labels include every one of labels; 0 when there are none.
func (b *Baton) Counter(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	response, err := http.Get("http://" + b.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("reading baton's metrics: %v", err)
	}
	defer response.Body.Close()
	page, err := io.ReadAll(response.Body)
	if err != nil {
		t.Fatalf("reading baton's metrics: %v", err)
	}
	total := 0.0
	for _, line := range strings.Split(string(page), "\n") {
		sample, value, found := strings.Cut(line, " ")
		if !found || !strings.HasPrefix(sample, name+"{") && sample != name {
			continue
		}
		matches := true
		for label, want := range labels {
			if !strings.Contains(sample, fmt.Sprintf("%s=%q", label, want)) {
				matches = false
			}
		}
		fields := strings.Fields(value) // the value, then any exemplar
		if len(fields) == 0 || !matches {
			continue
		}
		if number, err := strconv.ParseFloat(fields[0], 64); err == nil {
			total += number
		}
	}
	return total
}

// Log is what baton has logged so far (JSON lines, stdout and stderr).
func (b *Baton) Log() []byte { return readFile(b.logPath) }

// Terminate sends SIGTERM (a graceful shutdown) and waits for the process to exit.
func (b *Baton) Terminate() { b.process.stop(syscall.SIGTERM) }

// Signal sends signal (SIGSTOP, SIGCONT, …) without waiting for anything.
func (b *Baton) Signal(signal syscall.Signal) {
	if !b.process.exited() {
		_ = b.process.cmd.Process.Signal(signal)
	}
}

// FreePort returns a loopback port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	return listener.Addr().(*net.TCPAddr).Port
}

var (
	buildOnce sync.Once
	buildErr  error
)

// batonBinary is $BATON_BIN, else <repo>/target/debug/baton, built if missing.
func batonBinary(t testing.TB) string {
	t.Helper()
	if binary := os.Getenv("BATON_BIN"); binary != "" {
		return binary
	}
	_, here, _, _ := runtime.Caller(0)
	repo := filepath.Join(filepath.Dir(here), "..", "..", "..", "..")
	binary := filepath.Join(repo, "target", "debug", "baton")
	buildOnce.Do(func() {
		if _, err := os.Stat(binary); err == nil {
			return
		}
		build := exec.Command("cargo", "build", "--bin", "baton")
		build.Dir = repo
		if output, err := build.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("cargo build --bin baton: %v\n%s", err, output)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

// process is a started child, reaped by its own goroutine so that exit is observable.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func start(cmd *exec.Cmd) (*process, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop signals the process unless it has exited, then waits for it to exit.
func (p *process) stop(signal syscall.Signal) {
	if !p.exited() {
		_ = p.cmd.Process.Signal(signal)
	}
	<-p.done
}

func readFile(path string) []byte {
	data, _ := os.ReadFile(path)
	return data
}

// Eventually polls condition until it holds or patience runs out.
func Eventually(t testing.TB, patience time.Duration, what string, condition func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !condition() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true within %s", what, patience)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
