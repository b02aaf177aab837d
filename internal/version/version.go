// Package version describes the running binary from the build information
// Go embeds in it (module version, VCS revision, Go version), so that every
// command of the project prints its version the same way.
package version

import "runtime/debug"

// String describes the build of the command name, e.g.
// "dpsd v1.2.0 0123abcd... go1.26.8", with "(modified)" after the revision
// of a build from a changed work tree.
func String(name string) string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return name + " (unknown version)"
	}
	v := name + " " + bi.Main.Version
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v += " " + s.Value
		case "vcs.modified":
			if s.Value == "true" {
				v += " (modified)"
			}
		}
	}
	return v + " " + bi.GoVersion
}
