// keda-bench drives KEDA's built-in nats-jetstream scaler, its real code from
// the pinned KEDA module, the way KEDA's operator and metrics adapter do, and
// prints the same figures as the eds load benchmark as one JSON object.
//
// Two phases, picked by -mode:
//   - poll: one scaler per ScaledObject; each calls GetMetricsAndActivity once
//     per polling interval (the operator's loop) and once per HPA sync period
//     (the metrics adapter), each with a random phase, for -window;
//   - max: -workers scalers call it back to back for -window (closed loop).
//
// The scaler reads nats-server's HTTP monitoring port. Its bytes are counted
// by a loopback TCP proxy in front of that port: KEDA's HTTP transport is
// internal to its module, so the wire is the one place to count them.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers"
	"github.com/kedacore/keda/v2/pkg/scalers/scalersconfig"
	kedautil "github.com/kedacore/keda/v2/pkg/util"
)

type options struct {
	mode         string
	monitor      string
	account      string
	stream       string
	prefix       string
	consumers    int
	scaledObjs   int
	interval     time.Duration
	hpa          time.Duration
	window       time.Duration
	workers      int
	lagThreshold int
	natsPid      int
	httpTimeout  time.Duration
}

// Result is what the eds load benchmark reads back.
type Result struct {
	Mode          string  `json:"mode"`
	Consumers     int     `json:"consumers"`
	ScaledObjects int     `json:"scaled_objects"`
	WindowSecs    float64 `json:"window_secs"`
	Calls         int     `json:"calls"`
	Errors        int     `json:"errors"`
	FirstError    string  `json:"first_error,omitempty"`
	CallsPerSec   float64 `json:"calls_per_sec"`
	P50Micros     int64   `json:"p50_us"`
	P99Micros     int64   `json:"p99_us"`
	MaxMicros     int64   `json:"max_us"`
	HTTPRequests  int64   `json:"http_requests"`
	BytesRead     int64   `json:"bytes_read"`
	BytesPerCall  float64 `json:"bytes_per_call"`
	BytesPerSec   float64 `json:"bytes_per_sec"`
	HarnessCPU    float64 `json:"harness_cpu_secs"`
	NatsCPU       float64 `json:"nats_cpu_secs"`
	HarnessRSS    int64   `json:"harness_rss_bytes"`
}

func main() {
	var o options
	// KEDA's packages register test flags on the global set; keep ours apart.
	flags := flag.NewFlagSet("keda-bench", flag.ExitOnError)
	flags.StringVar(&o.mode, "mode", "poll", "poll (KEDA's schedule) or max (closed loop)")
	flags.StringVar(&o.monitor, "monitor", "", "nats-server HTTP monitoring host:port")
	flags.StringVar(&o.account, "account", "$G", "JetStream account")
	flags.StringVar(&o.stream, "stream", "", "stream name")
	flags.StringVar(&o.prefix, "prefix", "c", "consumer names are <prefix><i>")
	flags.IntVar(&o.consumers, "consumers", 1, "consumers on the stream")
	flags.IntVar(&o.scaledObjs, "scaled-objects", 0, "ScaledObjects to drive (default: one per consumer)")
	flags.DurationVar(&o.interval, "interval", 30*time.Second, "KEDA pollingInterval")
	flags.DurationVar(&o.hpa, "hpa", 15*time.Second, "HPA sync period (metrics adapter calls)")
	flags.DurationVar(&o.window, "window", 30*time.Second, "measurement window")
	flags.IntVar(&o.workers, "workers", 2, "closed-loop callers in max mode")
	flags.IntVar(&o.lagThreshold, "lag-threshold", 5, "lagThreshold")
	flags.IntVar(&o.natsPid, "nats-pid", 0, "nats-server pid, to report its CPU over the window")
	flags.DurationVar(&o.httpTimeout, "http-timeout", 3*time.Second, "KEDA's global HTTP timeout (its default is 3 s)")
	_ = flags.Parse(os.Args[1:])
	if o.monitor == "" || o.stream == "" {
		fail("-monitor and -stream are required")
	}
	if o.scaledObjs <= 0 {
		o.scaledObjs = o.consumers
	}
	// The connection pool of KEDA's operator with its default flags.
	if err := kedautil.ConfigureHTTPTransport(kedautil.HTTPTransportConfig{
		MaxIdleConns:        0,
		MaxIdleConnsPerHost: 1000,
		IdleConnTimeout:     90 * time.Second,
	}); err != nil {
		fail(err.Error())
	}
	result, err := run(o)
	if err != nil {
		fail(err.Error())
	}
	if err := json.NewEncoder(os.Stdout).Encode(result); err != nil {
		fail(err.Error())
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "keda-bench:", msg)
	os.Exit(1)
}

func run(o options) (*Result, error) {
	proxy, err := startProxy(o.monitor)
	if err != nil {
		return nil, err
	}
	n := o.scaledObjs
	if o.mode == "max" {
		n = o.workers
	}
	so := make([]*scaledObject, n)
	for i := range so {
		// Spread the ScaledObjects over the consumers.
		consumer := fmt.Sprintf("%s%d", o.prefix, i*o.consumers/n)
		s, err := newScaledObject(o, proxy.addr, consumer, i)
		if err != nil {
			return nil, err
		}
		so[i] = s
	}
	// One untimed call each: what KEDA does when it builds the scaler cache.
	for _, s := range so {
		if _, err := s.call(); err != nil {
			return nil, fmt.Errorf("first call for %s: %w", s.consumer, err)
		}
	}

	var rec recorder
	jszBefore, err := jszRequests(o.monitor)
	if err != nil {
		return nil, err
	}
	bytesBefore := proxy.down.Load()
	cpuBefore := selfCPU()
	natsBefore := processCPU(o.natsPid)
	started := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), o.window)
	defer cancel()
	var wg sync.WaitGroup
	switch o.mode {
	case "poll":
		for _, s := range so {
			wg.Add(2)
			go func() { defer wg.Done(); s.every(ctx, o.interval, &rec) }()
			go func() { defer wg.Done(); s.every(ctx, o.hpa, &rec) }()
		}
	case "max":
		for _, s := range so {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					rec.observe(s.call())
				}
			}()
		}
	default:
		return nil, fmt.Errorf("unknown -mode %q", o.mode)
	}
	wg.Wait()
	elapsed := time.Since(started).Seconds()
	cpu := selfCPU() - cpuBefore
	natsCPU := processCPU(o.natsPid) - natsBefore
	bytes := proxy.down.Load() - bytesBefore
	jszAfter, err := jszRequests(o.monitor)
	if err != nil {
		return nil, err
	}

	r := rec.summary()
	r.Mode = o.mode
	r.Consumers = o.consumers
	r.ScaledObjects = n
	r.WindowSecs = elapsed
	r.CallsPerSec = float64(r.Calls) / elapsed
	r.HTTPRequests = jszAfter - jszBefore
	r.BytesRead = bytes
	if r.Calls > 0 {
		r.BytesPerCall = float64(bytes) / float64(r.Calls)
	}
	r.BytesPerSec = float64(bytes) / elapsed
	r.HarnessCPU = cpu
	r.NatsCPU = natsCPU
	r.HarnessRSS = selfRSS()
	return r, nil
}

// scaledObject is one ScaledObject's trigger: its own scaler instance, as
// KEDA builds one per trigger. KEDA never runs two calls on one scaler at
// once, so neither do we.
type scaledObject struct {
	consumer string
	scaler   scalers.Scaler
	mu       sync.Mutex
}

func newScaledObject(o options, monitor, consumer string, i int) (*scaledObject, error) {
	cfg := &scalersconfig.ScalerConfig{
		ScalableObjectName:      fmt.Sprintf("so-%d", i),
		ScalableObjectNamespace: "bench",
		ScalableObjectType:      "ScaledObject",
		TriggerType:             "nats-jetstream",
		GlobalHTTPTimeout:       o.httpTimeout,
		TriggerMetadata: map[string]string{
			"natsServerMonitoringEndpoint": monitor,
			"account":                      o.account,
			"stream":                       o.stream,
			"consumer":                     consumer,
			"lagThreshold":                 strconv.Itoa(o.lagThreshold),
		},
	}
	s, err := scalers.NewNATSJetStreamScaler(cfg)
	if err != nil {
		return nil, fmt.Errorf("building the scaler for %s: %w", consumer, err)
	}
	return &scaledObject{consumer: consumer, scaler: s}, nil
}

// call runs one GetMetricsAndActivity and returns how long it took.
func (s *scaledObject) call() (time.Duration, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	started := time.Now()
	values, _, err := s.scaler.GetMetricsAndActivity(context.Background(), "s0-nats-jetstream")
	took := time.Since(started)
	if err == nil && len(values) != 1 {
		err = fmt.Errorf("%d metric values", len(values))
	}
	return took, err
}

// every calls once per period from a random phase until ctx ends. A call
// slower than the period delays the next one, as KEDA's loops do.
func (s *scaledObject) every(ctx context.Context, period time.Duration, rec *recorder) {
	next := time.Now().Add(time.Duration(rand.Int63n(int64(period))))
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(next)):
		}
		rec.observe(s.call())
		next = next.Add(period)
		if now := time.Now(); next.Before(now) {
			next = now
		}
	}
}

type recorder struct {
	mu       sync.Mutex
	micros   []int64
	errors   int
	firstErr string
}

func (r *recorder) observe(took time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.errors++
		if r.firstErr == "" {
			r.firstErr = err.Error()
		}
		return
	}
	r.micros = append(r.micros, took.Microseconds())
}

func (r *recorder) summary() *Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	sort.Slice(r.micros, func(i, j int) bool { return r.micros[i] < r.micros[j] })
	res := &Result{Calls: len(r.micros) + r.errors, Errors: r.errors, FirstError: r.firstErr}
	if n := len(r.micros); n > 0 {
		res.P50Micros = r.micros[quantileIndex(n, 0.50)]
		res.P99Micros = r.micros[quantileIndex(n, 0.99)]
		res.MaxMicros = r.micros[n-1]
	}
	return res
}

// quantileIndex is the nearest-rank index of quantile q in n sorted values,
// the same rule the Rust side uses.
func quantileIndex(n int, q float64) int {
	i := int(float64(n)*q+0.999999) - 1
	if i < 0 {
		i = 0
	}
	if i >= n {
		i = n - 1
	}
	return i
}

// proxy forwards loopback TCP to the monitoring port and counts the bytes
// flowing back to the scaler.
type proxy struct {
	addr string
	down atomic.Int64
}

func startProxy(upstream string) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{addr: ln.Addr().String()}
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(client, upstream)
		}
	}()
	return p, nil
}

func (p *proxy) serve(client net.Conn, upstream string) {
	defer client.Close()
	server, err := net.Dial("tcp", upstream)
	if err != nil {
		return
	}
	defer server.Close()
	go func() {
		_, _ = io.Copy(server, client)
		_ = server.(*net.TCPConn).CloseWrite()
	}()
	_, _ = io.Copy(counting{client, &p.down}, server)
}

type counting struct {
	w io.Writer
	n *atomic.Int64
}

func (c counting) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// jszRequests is nats-server's own count of /jsz requests served.
func jszRequests(monitor string) (int64, error) {
	resp, err := http.Get("http://" + monitor + "/varz")
	if err != nil {
		return 0, fmt.Errorf("reading /varz: %w", err)
	}
	defer resp.Body.Close()
	var varz struct {
		HTTPReqStats map[string]int64 `json:"http_req_stats"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&varz); err != nil {
		return 0, fmt.Errorf("decoding /varz: %w", err)
	}
	return varz.HTTPReqStats["/jsz"], nil
}

// selfCPU is this process's user+system CPU seconds.
func selfCPU() float64 { return processCPU(os.Getpid()) }

// processCPU reads utime+stime from /proc/<pid>/stat (0 for pid 0).
func processCPU(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which sits in parentheses.
	fields := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100 // USER_HZ is 100 on Linux
}

// selfRSS is this process's resident set size in bytes.
func selfRSS() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}
