package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkAdminImport imports a 10,000-row CSV of symmetric key
// enrollments per op through the bulk API over HTTPS into bbolt.
func BenchmarkAdminImport(b *testing.B) {
	e := newAdminEnvTB(b)
	rows := 0
	for i := 0; b.Loop(); i++ {
		var buf bytes.Buffer
		buf.WriteString("registrationId,attestationType,iotHubHostName\n")
		for j := range 10000 {
			fmt.Fprintf(&buf, "b%d-%d,symmetricKey,hub.example.net\n", i, j)
		}
		file := filepath.Join(e.dir, fmt.Sprintf("b%d.csv", i))
		if err := os.WriteFile(file, buf.Bytes(), 0o600); err != nil {
			b.Fatal(err)
		}
		if code := runEnrollmentCmd(b.Context(), append([]string{"import", file}, e.flags...), io.Discard, io.Discard); code != 0 {
			b.Fatalf("exit %d", code)
		}
		rows += 10000
	}
	b.ReportMetric(float64(rows)/b.Elapsed().Seconds(), "rows/s")
}
