package allocator_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/tpmdps/dpsd/allocator"
)

// FuzzParseResponse: any bytes a webhook answers give a Response with a
// hub or an *Error, never a panic.
func FuzzParseResponse(f *testing.F) {
	for _, name := range []string{"f3-response.json", "f4-response-payload.json", "f6-response.json"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"iotHubHostName":null,"initialTwin":[],"payload":{}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := allocator.ParseResponse(data)
		if err != nil {
			var e *allocator.Error
			if !errors.As(err, &e) || e.ErrorCode == 0 || r != nil {
				t.Fatalf("%v %v", r, err)
			}
			return
		}
		if r.IoTHubHostName == "" {
			t.Fatal("a response without a hub")
		}
	})
}
