package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// freePort asks the kernel for a port nobody listens on. Another process could take it
// before the child binds it; the children are started right after, so that is rare.
func freePort() (int, error) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer listener.Close()
	return listener.Addr().(*net.TCPAddr).Port, nil
}

// waitForPort polls until something accepts connections on port, or the child exits.
func waitForPort(port int, exited <-chan struct{}, patience time.Duration) error {
	deadline := time.Now().Add(patience)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return errors.New("exited before listening")
		default:
		}
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond)
		if err == nil {
			conn.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("nothing listens on %d after %s", port, patience)
}

// child is a process the harness started and must stop.
type child struct {
	cmd    *exec.Cmd
	exited chan struct{}
	output *bytes.Buffer
}

func startChild(name string, args []string, logPath string) (*child, error) {
	return startChildEnv(name, args, nil, logPath)
}

// startChildEnv starts name with environ (nil: the harness's own environment).
func startChildEnv(name string, args, environ []string, logPath string) (*child, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = environ
	output := &bytes.Buffer{}
	var sink io.Writer = output
	if logPath != "" {
		if file, err := os.Create(logPath); err == nil {
			sink = io.MultiWriter(output, file)
		}
	}
	cmd.Stdout = sink
	cmd.Stderr = sink
	// Its own process group, so a Ctrl-C of the harness reaches it only through stop().
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, exited: make(chan struct{}), output: output}
	go func() {
		_ = cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

// stop ends the child with SIGTERM, then SIGKILL if it lingers.
func (c *child) stop() {
	select {
	case <-c.exited:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(5 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
}

// redisServer is a private, non-persistent redis-server on a free port.
type redisServer struct {
	*child
	port int
}

func startRedis(bin string) (*redisServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	c, err := startChild(bin, []string{"--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"}, "")
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	if err := waitForPort(port, c.exited, 10*time.Second); err != nil {
		c.stop()
		return nil, fmt.Errorf("redis-server: %w\n%s", err, c.output.String())
	}
	return &redisServer{child: c, port: port}, nil
}

func (r *redisServer) url() string { return fmt.Sprintf("redis://127.0.0.1:%d/", r.port) }

// flushAll empties Redis between scenarios, so each starts with no counters.
func (r *redisServer) flushAll() error {
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", r.port), 2*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("*1\r\n$8\r\nFLUSHALL\r\n")); err != nil {
		return err
	}
	reply := make([]byte, 16)
	n, err := conn.Read(reply)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(string(reply[:n]), "+OK") {
		return fmt.Errorf("FLUSHALL answered %q", reply[:n])
	}
	return nil
}

// batonOptions say how one scenario's baton is started.
type batonOptions struct {
	// configDir holds upstream-format YAML files, one domain each.
	configDir string
	// headers asks for upstream's RateLimit-* response headers
	// (LIMIT_RESPONSE_HEADERS_ENABLED=true upstream).
	headers bool
}

// baton is one running server and a client of its RateLimitService.
type baton struct {
	*child
	conn   *grpc.ClientConn
	client rlsv3.RateLimitServiceClient
}

// env describes the run: binaries, mode, and what the baton binary offers.
type env struct {
	batonBin  string
	redis     *redisServer
	mode      string
	upstream  string
	workDir   string
	help      string
	logSerial int
	// reference, when set, is upstream's own ratelimit binary, run instead of baton to
	// check the harness's expectations against the implementation they come from.
	reference string
}

func (e *env) hasFlag(flag string) bool {
	return strings.Contains(e.help, flag+" ") || strings.Contains(e.help, flag+"\n") || strings.Contains(e.help, flag+"=")
}

// batonArgs builds the command line for opts, or says why this baton cannot run them.
func (e *env) batonArgs(opts batonOptions, port, metricsPort int) ([]string, error) {
	args := []string{
		"--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--metrics-listen", fmt.Sprintf("127.0.0.1:%d", metricsPort),
		"--redis-url", e.redis.url(),
	}
	if !e.hasFlag("--envoy-config-dir") {
		return nil, errors.New("this baton has no --envoy-config-dir (it cannot read upstream's YAML files)")
	}
	args = append(args, "--envoy-config-dir", opts.configDir)
	if e.mode == "upstream" {
		if !e.hasFlag("--envoy-counting") {
			return nil, errors.New("this baton has no --envoy-counting (upstream's counting is not available)")
		}
		args = append(args, "--envoy-counting", "upstream")
	}
	if opts.headers {
		flag := e.headersFlag()
		if flag == "" {
			return nil, errors.New("this baton has no option for upstream's RateLimit-* response headers (LIMIT_RESPONSE_HEADERS_ENABLED)")
		}
		args = append(args, flag)
	}
	return args, nil
}

// headersFlag finds the option that turns on the draft RateLimit-* headers, under the
// names the lead may give it.
func (e *env) headersFlag() string {
	for _, flag := range []string{"--envoy-response-headers", "--envoy-ratelimit-headers", "--envoy-headers"} {
		if e.hasFlag(flag) {
			return flag
		}
	}
	return ""
}

// referenceEnv configures upstream's own server as its integration tests and
// docker-compose do: rules from the directory itself (RUNTIME_WATCH_ROOT=false), Redis over
// TCP, no statsd.
func (e *env) referenceEnv(opts batonOptions, port int) ([]string, error) {
	httpPort, err := freePort()
	if err != nil {
		return nil, err
	}
	debugPort, err := freePort()
	if err != nil {
		return nil, err
	}
	environ := append(os.Environ(),
		"USE_STATSD=false", "LOG_LEVEL=warn", "BACKEND_TYPE=redis",
		"REDIS_SOCKET_TYPE=tcp", fmt.Sprintf("REDIS_URL=127.0.0.1:%d", e.redis.port),
		"RUNTIME_ROOT="+filepath.Dir(opts.configDir), "RUNTIME_SUBDIRECTORY=",
		"RUNTIME_APPDIRECTORY="+filepath.Base(opts.configDir), "RUNTIME_WATCH_ROOT=false",
		// As Kubernetes deployments of upstream set it, for ConfigMap volumes' ..data.
		"RUNTIME_IGNOREDOTFILES=true",
		"HOST=127.0.0.1", fmt.Sprintf("PORT=%d", httpPort),
		"DEBUG_HOST=127.0.0.1", fmt.Sprintf("DEBUG_PORT=%d", debugPort),
		"GRPC_HOST=127.0.0.1", fmt.Sprintf("GRPC_PORT=%d", port),
	)
	if opts.headers {
		environ = append(environ, "LIMIT_RESPONSE_HEADERS_ENABLED=true")
	}
	return environ, nil
}

// startServer starts baton (or the reference server) on port with opts.
func (e *env) startServer(name string, opts batonOptions, port int) (*child, string, error) {
	e.logSerial++
	logPath := filepath.Join(e.workDir, fmt.Sprintf("server-%s-%02d-%s.log", e.mode, e.logSerial, sanitize(name)))
	if e.reference != "" {
		environ, err := e.referenceEnv(opts, port)
		if err != nil {
			return nil, "", err
		}
		c, err := startChildEnv(e.reference, nil, environ, logPath)
		return c, e.reference, err
	}
	metricsPort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	args, err := e.batonArgs(opts, port, metricsPort)
	if err != nil {
		return nil, "", err
	}
	c, err := startChild(e.batonBin, args, logPath)
	return c, e.batonBin + " " + strings.Join(args, " "), err
}

// startBaton starts a baton for one scenario; a baton that exits before it listens is an
// error whose text carries its output.
func (e *env) startBaton(name string, opts batonOptions) (*baton, error) {
	if err := e.redis.flushAll(); err != nil {
		return nil, fmt.Errorf("flush redis: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	c, command, err := e.startServer(name, opts, port)
	if err != nil {
		return nil, err
	}
	if err := waitForPort(port, c.exited, 20*time.Second); err != nil {
		c.stop()
		return nil, fmt.Errorf("%s: %w\n%s", command, err, lastLines(c.output.String(), 15))
	}
	conn, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", port), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		c.stop()
		return nil, err
	}
	return &baton{child: c, conn: conn, client: rlsv3.NewRateLimitServiceClient(conn)}, nil
}

func (b *baton) close() {
	_ = b.conn.Close()
	b.stop()
}

func (b *baton) shouldRateLimit(request *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return b.client.ShouldRateLimit(ctx, request)
}

// refusesToStart starts baton on a config directory that upstream rejects and reports
// whether baton refused it too: it exits with an error, or answers every ShouldRateLimit
// with an error as upstream does when it has no valid configuration.
func (e *env) refusesToStart(name string, opts batonOptions, probe *rlsv3.RateLimitRequest) (bool, string) {
	port, err := freePort()
	if err != nil {
		return false, err.Error()
	}
	c, _, err := e.startServer(name, opts, port)
	if err != nil {
		return false, err.Error()
	}
	defer c.stop()
	if err := waitForPort(port, c.exited, 20*time.Second); err != nil {
		<-c.exited
		if c.cmd.ProcessState.ExitCode() != 0 {
			return true, "exited with status " + fmt.Sprint(c.cmd.ProcessState.ExitCode())
		}
		return false, "exited with status 0"
	}
	conn, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", port), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return false, err.Error()
	}
	defer conn.Close()
	b := &baton{child: c, conn: conn, client: rlsv3.NewRateLimitServiceClient(conn)}
	response, err := b.shouldRateLimit(probe)
	if err != nil {
		return true, "served, answering errors: " + err.Error()
	}
	return false, "started and answered " + formatResponse(response)
}

func sanitize(name string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '_'
	}, name)
}

func lastLines(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// copyFiles copies named files into a fresh directory under the work directory: baton
// watches its config directory, and the module cache is read-only.
func (e *env) configDir(name string, files ...string) (string, error) {
	dir, err := os.MkdirTemp(e.workDir, "config-"+sanitize(name)+"-")
	if err != nil {
		return "", err
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(file)), data, 0o644); err != nil {
			return "", err
		}
	}
	return dir, nil
}
