// Command ferretdb runs FerretDB v1 (the MongoDB wire protocol on SQLite) through its embeddable
// package. We build this small wrapper instead of FerretDB's own cmd/ferretdb because a build of
// that command from the module proxy has no version stamp and refuses to start.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen-addr", "127.0.0.1:27017", "TCP address to listen on")
	dir := flag.String("sqlite-dir", ".data/mongo", "directory holding the SQLite databases")
	level := flag.String("log-level", "error", "log level: debug, info, warn, error")
	flag.Parse()
	// FERRETDB_PPROF_ADDR (e.g. 127.0.0.1:6060) serves Go's pprof there: where the server's CPU
	// goes under a benchmark (go tool pprof <binary> http://<addr>/debug/pprof/profile).
	if addr := os.Getenv("FERRETDB_PPROF_ADDR"); addr != "" {
		go func() { _ = http.ListenAndServe(addr, nil) }()
	}

	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(os.Stderr, "ferretdb: bad -log-level %q: %v\n", *level, err)
		os.Exit(2)
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		fmt.Fprintf(os.Stderr, "ferretdb: cannot create %s: %v\n", *dir, err)
		os.Exit(1)
	}
	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))

	f, err := ferretdb.New(&ferretdb.Config{
		Listener: ferretdb.ListenerConfig{TCP: *listen},
		Logger:   logger,
		Handler:  "sqlite",
		// WAL with synchronous=NORMAL: a commit survives the server being killed, and only an
		// operating-system crash or power loss can undo the last commits (as MongoDB's default
		// write concern, whose journal is flushed every 100 ms). FULL (SQLite's default) fsyncs
		// the log on every commit, and a test or benchmark mesh pays that on every write.
		SQLiteURL: "file:" + *dir + "/?_pragma=synchronous(normal)",
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "ferretdb: %v\n", err)
		os.Exit(1)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	fmt.Fprintf(os.Stderr, "ferretdb: listening on %s, data in %s\n", *listen, *dir)
	if err := f.Run(ctx); err != nil && ctx.Err() == nil {
		fmt.Fprintf(os.Stderr, "ferretdb: %v\n", err)
		os.Exit(1)
	}
}
