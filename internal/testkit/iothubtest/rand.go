package iothubtest

import "crypto/rand"

// randRead fills b with random bytes.
func randRead(b []byte) (int, error) { return rand.Read(b) }
