package dpsdtest

import (
	"crypto/tls"
	"net"
	"testing"
	"time"
)

func TestStart(t *testing.T) {
	s := Start(t, Options{WebSocket: true})
	if s.IDScope != DefaultIDScope || s.Store == nil || s.Service == nil || s.Broker == nil {
		t.Fatalf("server %+v", s)
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", s.TLSAddr, s.TLSConfig())
	if err != nil {
		t.Fatalf("TLS handshake with the test CA: %v", err)
	}
	c.Close()
	ip := s.TLSConfig().Clone()
	ip.ServerName = "127.0.0.1"
	if c, err = tls.Dial("tcp", s.WSAddr, ip); err != nil {
		t.Fatalf("TLS handshake on the WebSocket port for 127.0.0.1: %v", err)
	}
	c.Close()
	if nc, err := net.Dial("tcp", s.TCPAddr); err != nil {
		t.Fatal(err)
	} else {
		nc.Close()
	}
	if total, _ := s.Broker.Sessions(); total != 0 {
		t.Fatalf("%d sessions before any CONNECT", total)
	}
}
