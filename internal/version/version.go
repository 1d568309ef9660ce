// Package version holds the build's version, stamped by the Makefile and the
// Dockerfile through -ldflags.
package version

// Version is the build's version; "dev" when not stamped.
var Version = "dev"
