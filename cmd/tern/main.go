// Command tern is the Tern mail delivery engine and its operator CLI.
//
// This is a placeholder so that the package builds and its tests run; the real
// subcommands (serve, check, hash-password, ...) replace it.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "usage: tern <command> [arguments]")
	fmt.Fprintln(os.Stderr, "commands: serve, check, hash-password (not built yet)")
	os.Exit(2)
}
