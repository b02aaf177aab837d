package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/tpmdps/dpsd/cmd/dps-load/internal/barebroker"
	"github.com/tpmdps/dpsd/internal/devca"
)

// cmdBareBroker runs the baseline broker until ctx ends. Its first output
// line is "tcp=ADDR tls=ADDR", read by "run --baseline".
func cmdBareBroker(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var tcpAddr, tlsAddr string
	var reply int
	fs := flag.NewFlagSet("dps-load bare-broker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&tcpAddr, "tcp-addr", "127.0.0.1:1884", "plain MQTT address (empty: off)")
	fs.StringVar(&tlsAddr, "tls-addr", "", "MQTT over TLS address, with a throwaway certificate for localhost and 127.0.0.1 (empty: off)")
	fs.IntVar(&reply, "reply-size", barebroker.DefaultReplySize, "answer body size in bytes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg := barebroker.Config{TCPAddr: tcpAddr, TLSAddr: tlsAddr, ReplySize: reply}
	if tlsAddr != "" {
		now := time.Now()
		ca, err := devca.NewCA("dps-load bare broker CA", now, 24*time.Hour)
		if err != nil {
			return err
		}
		certPEM, keyPEM, err := ca.Issue([]string{"localhost", "127.0.0.1"}, now, 24*time.Hour)
		if err != nil {
			return err
		}
		if cfg.TLSConfig, err = devca.TLSConfig(certPEM, keyPEM); err != nil {
			return err
		}
	}
	b, err := barebroker.Start(ctx, cfg)
	if err != nil {
		return err
	}
	var tcp, tls string
	if a := b.TCPAddr(); a != nil {
		tcp = a.String()
	}
	if a := b.TLSAddr(); a != nil {
		tls = a.String()
	}
	fmt.Fprintf(stdout, "tcp=%s tls=%s\n", tcp, tls)
	<-ctx.Done()
	return b.Close()
}
