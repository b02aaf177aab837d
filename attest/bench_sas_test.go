package attest

import (
	"testing"
	"time"
)

func BenchmarkSASVerify(b *testing.B) {
	key := sasTestKey(b)
	tok, err := ParseSASToken(sasTokCSharp)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Unix(sasTestNow, 0)
	b.ReportAllocs()
	for b.Loop() {
		if err := tok.Verify(key, sasTestResource, now, SASPolicy{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseSASToken(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseSASToken(sasTokPython); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSASParseAndVerify is the broker's whole per-CONNECT cost.
func BenchmarkSASParseAndVerify(b *testing.B) {
	key := sasTestKey(b)
	now := time.Unix(sasTestNow, 0)
	b.ReportAllocs()
	for b.Loop() {
		tok, err := ParseSASToken(sasTokC)
		if err != nil {
			b.Fatal(err)
		}
		if err := tok.Verify(key, sasTestResource, now, SASPolicy{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSignSAS(b *testing.B) {
	key := sasTestKey(b)
	exp := time.Unix(sasTestSE, 0)
	b.ReportAllocs()
	for b.Loop() {
		SignSAS(key, sasTestResource, exp, "registration")
	}
}

func BenchmarkParseUsername(b *testing.B) {
	const u = "0ne00000A0A/registrations/sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6/api-version=2021-10-01" +
		"&ClientVersion=Microsoft.Azure.Devices.Provisioning.Client%2F1.19.0%20%28.NET%206.0%29"
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseUsername(u); err != nil {
			b.Fatal(err)
		}
	}
}
