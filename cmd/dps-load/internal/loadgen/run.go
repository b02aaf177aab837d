// Package loadgen is the engine of the dps-load tool: it simulates many
// devices provisioning concurrently against a running dpsd over MQTT (TCP or
// TLS), with software-emulated TPMs (softtpm) or symmetric keys,
// and reports throughput, latency per phase, errors by kind and the server's
// CPU time per provisioning (read from /proc). Against a bare broker
// (cmd/dps-load/internal/barebroker) it runs the same packets without any crypto, the
// floor that provisioning costs are compared with.
//
// Devices speak a minimal MQTT 3.1.1 client of this package, not a full
// client library: on a small machine the load generator competes with the
// server for CPU, and the less it spends per packet the more of the machine
// the server gets.
package loadgen

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Config.
const (
	DefaultConcurrency = 10
	DefaultTimeout     = 30 * time.Second
)

// Config is one load run.
type Config struct {
	// Addr is the broker's MQTT address (host:port).
	Addr string
	// TLS, when set, makes every connection MQTT over TLS.
	TLS *tls.Config
	// IDScope is the broker's ID scope.
	IDScope string
	// Devices are the (already enrolled) devices, provisioned round robin.
	Devices []*Device
	// Count is how many provisionings to run; with Duration, the run ends
	// at whichever comes first. Both zero: one per device.
	Count int
	// Duration bounds the run (no new provisioning starts after it).
	Duration time.Duration
	// Concurrency is the number of devices provisioning at once (at most
	// len(Devices): a device is never provisioned twice at once).
	Concurrency int
	// Ramp spreads the start of the Concurrency workers over this time.
	Ramp time.Duration
	// Rate, when positive, starts provisionings at this many per second
	// (an open loop, as devices arrive independently), Concurrency bounding
	// those in flight; zero runs a closed loop (each worker starts its next
	// provisioning when the previous one ends).
	Rate float64
	// Timeout bounds each network step (dial, handshake, one round trip).
	Timeout time.Duration
	// VerifyHubKey also opens the final hub key blob of TPM devices.
	VerifyHubKey bool
	// Baseline runs the bare-broker packet script instead of provisioning
	// (the target must be a cmd/dps-load/internal/barebroker broker).
	Baseline bool
	// ServerPID, when not zero, is the server process whose CPU time is
	// read from /proc before and after the run.
	ServerPID int
	// Progress, when set, receives a live progress line every
	// ProgressInterval (default 1 s), rewritten in place with "\r".
	Progress         io.Writer
	ProgressInterval time.Duration
}

// Report is the outcome of a run. Durations are in milliseconds.
type Report struct {
	Target      string `json:"target"` // "dpsd" or "bare-broker"
	Addr        string `json:"addr"`
	Transport   string `json:"transport"` // "tcp" or "tls"
	Mix         string `json:"mix"`
	Devices     int    `json:"devices"`
	Concurrency int    `json:"concurrency"`
	// Rate is the open-loop arrival rate asked for (0: closed loop).
	Rate      float64   `json:"rate,omitempty"`
	RampMs    float64   `json:"rampMs"`
	Started   time.Time `json:"started"`
	ElapsedMs float64   `json:"elapsedMs"`
	Attempted int       `json:"attempted"`
	Succeeded int       `json:"succeeded"`
	Failed    int       `json:"failed"`
	Throttled int       `json:"throttled"` // 429 answers retried
	// PerSecond is Succeeded / elapsed; SteadyPerSecond counts only the
	// provisionings finished after the ramp, over the time after it.
	PerSecond       float64 `json:"perSecond"`
	SteadyPerSecond float64 `json:"steadyPerSecond"`
	// Phases holds latency statistics per phase (successful provisionings).
	Phases map[string]Latency `json:"phases"`
	// Errors counts failed provisionings by "phase/kind".
	Errors map[string]int `json:"errors"`
	// FirstError is one error message, for diagnosis.
	FirstError string `json:"firstError,omitempty"`
	// Server is the server's CPU time over the run (ServerPID set).
	Server *ProcessCPU `json:"server,omitempty"`
	// ClientCPUMs is this process's CPU time over the run.
	ClientCPUMs float64 `json:"clientCpuMs"`
}

// Latency is the distribution of one phase.
type Latency struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50"`
	P95   float64 `json:"p95"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
	Mean  float64 `json:"mean"`
}

// ProcessCPU is a process's CPU time over a run.
type ProcessCPU struct {
	PID    int     `json:"pid"`
	UserMs float64 `json:"userMs"`
	SysMs  float64 `json:"sysMs"`
	// PerProvisioningMs is (user + sys) / succeeded provisionings.
	PerProvisioningMs float64 `json:"perProvisioningMs"`
	// RSSStartKiB and RSSEndKiB are VmRSS before and after.
	RSSStartKiB int64 `json:"rssStartKiB"`
	RSSEndKiB   int64 `json:"rssEndKiB"`
}

// result is one finished provisioning.
type result struct {
	tm  timing
	err error
	end time.Time
}

// Run runs the load described by cfg and returns its report. It returns
// an error only for an unusable Config or an unreadable server process;
// failed provisionings are counted in the report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Addr == "" || len(cfg.Devices) == 0 {
		return nil, errors.New("loadgen: Addr and Devices are required")
	}
	if cfg.IDScope == "" && !cfg.Baseline {
		return nil, errors.New("loadgen: IDScope is required")
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	// Each concurrent worker needs a device of its own.
	cfg.Concurrency = min(cfg.Concurrency, len(cfg.Devices))
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Count <= 0 && cfg.Duration <= 0 {
		cfg.Count = len(cfg.Devices)
	}
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = time.Second
	}
	if cfg.IDScope == "" {
		cfg.IDScope = "baseline"
	}
	var throttled atomic.Int64
	r := &runner{cfg: &cfg, throttled: func() { throttled.Add(1) }}

	var cpuStart procSample
	if cfg.ServerPID != 0 {
		var err error
		if cpuStart, err = readProc(cfg.ServerPID); err != nil {
			return nil, err
		}
	}
	ruStart := selfCPU()

	runCtx := ctx
	var cancel context.CancelFunc = func() {}
	if cfg.Duration > 0 {
		runCtx, cancel = context.WithTimeout(ctx, cfg.Duration)
	}
	defer cancel()

	start := time.Now()
	rampEnd := start.Add(cfg.Ramp)
	var tokens chan struct{}
	if cfg.Rate > 0 {
		tokens = make(chan struct{}, cfg.Concurrency)
		go feedTokens(runCtx, tokens, cfg.Rate)
	}
	var next, cursor, done, failed, inflight atomic.Int64
	busy := make([]atomic.Bool, len(cfg.Devices))
	results := make([][]result, cfg.Concurrency)
	var wg sync.WaitGroup
	for w := range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if cfg.Ramp > 0 {
				delay := cfg.Ramp * time.Duration(w) / time.Duration(cfg.Concurrency)
				t := time.NewTimer(delay)
				select {
				case <-runCtx.Done():
					t.Stop()
					return
				case <-t.C:
				}
			}
			for runCtx.Err() == nil {
				if tokens != nil {
					select {
					case <-runCtx.Done():
						return
					case <-tokens:
					}
				}
				n := int(next.Add(1)) - 1
				if cfg.Count > 0 && n >= cfg.Count {
					return
				}
				// Devices are taken round robin, skipping those in flight:
				// one device is never provisioned twice at once (a second
				// connection with the same ClientId would take over the
				// first). Concurrency <= len(Devices), so one is free.
				idx := int(cursor.Add(1)-1) % len(cfg.Devices)
				for !busy[idx].CompareAndSwap(false, true) {
					idx = int(cursor.Add(1)-1) % len(cfg.Devices)
				}
				d := cfg.Devices[idx]
				inflight.Add(1)
				var res result
				// In-flight provisionings finish even when the duration ends.
				pctx := context.WithoutCancel(ctx)
				if cfg.Baseline {
					res.err = r.baseline(pctx, d, &res.tm)
				} else {
					res.err = r.provision(pctx, d, &res.tm)
				}
				res.end = time.Now()
				busy[idx].Store(false)
				inflight.Add(-1)
				done.Add(1)
				if res.err != nil {
					failed.Add(1)
				}
				results[w] = append(results[w], res)
			}
		}()
	}

	stopProgress := make(chan struct{})
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		if cfg.Progress == nil {
			return
		}
		tick := time.NewTicker(cfg.ProgressInterval)
		defer tick.Stop()
		last, lastT := int64(0), start
		for {
			select {
			case <-stopProgress:
				fmt.Fprintln(cfg.Progress)
				return
			case now := <-tick.C:
				d := done.Load()
				rate := float64(d-last) / now.Sub(lastT).Seconds()
				last, lastT = d, now
				fmt.Fprintf(cfg.Progress, "\r[%6.1fs] done %d  ok %d  failed %d  in flight %d  %.0f/s   ",
					now.Sub(start).Seconds(), d, d-failed.Load(), failed.Load(), inflight.Load(), rate)
			}
		}
	}()
	wg.Wait()
	end := time.Now()
	close(stopProgress)
	<-progressDone

	rep := &Report{
		Target:      "dpsd",
		Addr:        cfg.Addr,
		Transport:   "tcp",
		Mix:         mixOf(cfg.Devices),
		Devices:     len(cfg.Devices),
		Concurrency: cfg.Concurrency,
		Rate:        cfg.Rate,
		RampMs:      ms(cfg.Ramp),
		Started:     start.UTC(),
		ElapsedMs:   ms(end.Sub(start)),
		Throttled:   int(throttled.Load()),
		Phases:      map[string]Latency{},
		Errors:      map[string]int{},
	}
	if cfg.Baseline {
		rep.Target = "bare-broker"
	}
	if cfg.TLS != nil {
		rep.Transport = "tls"
	}
	var samples [numPhases][]time.Duration
	steady := 0
	for _, rs := range results {
		for _, res := range rs {
			rep.Attempted++
			if res.err != nil {
				rep.Failed++
				key := res.err.Error()
				var e *Error
				if errors.As(res.err, &e) {
					key = e.Phase + "/" + e.Kind
				}
				rep.Errors[key]++
				if rep.FirstError == "" {
					rep.FirstError = res.err.Error()
				}
				continue
			}
			rep.Succeeded++
			if cfg.Ramp > 0 && res.end.After(rampEnd) {
				steady++
			}
			for i := range numPhases {
				if res.tm.set[i] {
					samples[i] = append(samples[i], res.tm.d[i])
				}
			}
		}
	}
	for i, name := range Phases() {
		if len(samples[i]) > 0 {
			rep.Phases[name] = latencyOf(samples[i])
		}
	}
	if el := end.Sub(start).Seconds(); el > 0 {
		rep.PerSecond = float64(rep.Succeeded) / el
	}
	rep.SteadyPerSecond = rep.PerSecond
	if cfg.Ramp > 0 {
		if el := end.Sub(rampEnd).Seconds(); el > 0 {
			rep.SteadyPerSecond = float64(steady) / el
		}
	}
	rep.ClientCPUMs = ms(selfCPU() - ruStart)
	if cfg.ServerPID != 0 {
		cpuEnd, err := readProc(cfg.ServerPID)
		if err != nil {
			return rep, err
		}
		rep.Server = cpuStart.delta(cpuEnd, rep.Succeeded)
	}
	return rep, nil
}

// feedTokens sends rate tokens per second to tokens until ctx ends (a
// token that finds the buffer full is dropped: the run is behind).
func feedTokens(ctx context.Context, tokens chan<- struct{}, rate float64) {
	const tick = 5 * time.Millisecond
	t := time.NewTicker(tick)
	defer t.Stop()
	start, sent := time.Now(), 0
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			due := int(now.Sub(start).Seconds() * rate)
			for ; sent < due; sent++ {
				select {
				case tokens <- struct{}{}:
				default:
				}
			}
		}
	}
}

// mixOf describes the kinds of devices, e.g. "tpm-rsa:10,symmetric:5".
func mixOf(ds []*Device) string {
	counts := map[DeviceKind]int{}
	for _, d := range ds {
		counts[d.Kind]++
	}
	s := ""
	for _, k := range []DeviceKind{TPMRSA, TPMECC, Symmetric} {
		if counts[k] > 0 {
			if s != "" {
				s += ","
			}
			s += fmt.Sprintf("%s:%d", k, counts[k])
		}
	}
	return s
}

// latencyOf sorts ds and returns its statistics.
func latencyOf(ds []time.Duration) Latency {
	slices.Sort(ds)
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	q := func(p float64) float64 {
		i := int(p*float64(len(ds))+0.999999) - 1
		return ms(ds[max(0, min(i, len(ds)-1))])
	}
	return Latency{Count: len(ds), P50: q(0.50), P95: q(0.95), P99: q(0.99), Max: ms(ds[len(ds)-1]),
		Mean: ms(sum / time.Duration(len(ds)))}
}

// ms converts a duration to fractional milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
