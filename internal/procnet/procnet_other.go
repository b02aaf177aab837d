//go:build !linux

package procnet

// ListeningPID finds the process listening on TCP port (Linux only).
func ListeningPID(port int) (int, error) { return 0, ErrUnsupported }
