package main

// dpsd store copy --from STORE --to etcd://... [flags]
// dpsd store restore FILE --to etcd://... [flags]
// dpsd store check --store STORE [flags]

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/tpmdps/dpsd/internal/config"
	"github.com/tpmdps/dpsd/internal/datadir"
	"github.com/tpmdps/dpsd/store"
	"github.com/tpmdps/dpsd/store/bolt"
	etcdstore "github.com/tpmdps/dpsd/store/etcd"
)

const storeUsage = `Usage: dpsd store copy --from bolt:PATH --to etcd://HOST:2379[,...]/PREFIX --secrets-dir DIR [flags]
       dpsd store restore FILE --to etcd://HOST:2379[,...]/PREFIX --secrets-dir DIR [flags]
       dpsd store check --store STORE [--secrets-dir DIR] [flags]

copy moves an installation to an etcd cluster: every enrollment group,
enrollment and registration record of the source (a bbolt file, opened
with its key file; stop the dpsd using it first) is written to the target
prefix, which must be empty, with its times kept and its secrets sealed
again with the cluster's store key (from secrets-dir). Operations in
flight (what devices poll for, an hour at most) are not copied. Then it
verifies: the counts of both sides, every record compared field by field
(secrets included), and the target's own consistency check.

restore writes a backup of an etcd store (dpsd backup against a cluster)
into an empty prefix of a cluster with the same secrets, after checking
the file.

check runs the engine's consistency check (indexes against records,
secrets open with the key).

Flags:
`

// storeFlags are the flags of the store subcommands.
type storeFlags struct {
	from, to, st, secretsDir, keyFile string
	etcdCA, etcdCert, etcdKey         string
}

// runStoreCmd runs "dpsd store copy|restore|check".
func runStoreCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, storeUsage)
		return 2
	}
	sub := args[0]
	fs := flag.NewFlagSet("dpsd store "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f storeFlags
	fs.StringVar(&f.from, "from", "", "copy: the source store, bolt:PATH (or etcd://...)")
	fs.StringVar(&f.to, "to", "", "copy, restore: the target, etcd://host:2379[,...]/prefix")
	fs.StringVar(&f.st, "store", "", "check: the store, bolt:PATH or etcd://...")
	fs.StringVar(&f.secretsDir, "secrets-dir", os.Getenv(config.EnvPrefix+"SECRETS_DIR"), "the cluster secrets directory (its store key seals secrets in etcd)")
	fs.StringVar(&f.keyFile, "key-file", "", "the bbolt source's data key file (default PATH.key)")
	fs.StringVar(&f.etcdCA, "etcd-ca", os.Getenv(config.EnvPrefix+"ETCD_CA"), "PEM CA of the etcd servers (TLS)")
	fs.StringVar(&f.etcdCert, "etcd-cert", os.Getenv(config.EnvPrefix+"ETCD_CERT"), "PEM client certificate for etcd")
	fs.StringVar(&f.etcdKey, "etcd-key", os.Getenv(config.EnvPrefix+"ETCD_KEY"), "PEM key of etcd-cert")
	fs.Usage = func() { fmt.Fprint(stderr, storeUsage); fs.PrintDefaults() }
	rest := args[1:]
	var pos []string
	for len(rest) > 0 { // positional arguments may sit between flags
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		pos, rest = append(pos, fs.Arg(0)), fs.Args()[1:]
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var err error
	switch {
	case sub == "copy" && len(pos) == 0 && f.from != "" && f.to != "":
		err = storeCopy(ctx, f, stdout, log)
	case sub == "restore" && len(pos) == 1 && f.to != "":
		err = storeRestore(ctx, f, pos[0], stdout, log)
	case sub == "check" && len(pos) == 0 && f.st != "":
		err = storeCheck(ctx, f, stdout, log)
	default:
		fs.Usage()
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "dpsd store %s: %v\n", sub, err)
		return 1
	}
	return 0
}

// open opens the store v (bolt:PATH or etcd://...) for an admin command.
func (f storeFlags) open(ctx context.Context, v string, log *slog.Logger) (store.Store, error) {
	spec, err := parseStoreSpec(v, "")
	if err != nil || v == "" {
		return nil, fmt.Errorf("store %q: want bolt:PATH or etcd://host:2379[,...][/prefix]", v)
	}
	if spec.engine == "bolt" {
		st, err := bolt.Open(spec.path, bolt.Options{Timeout: 5 * time.Second, KeyFile: f.keyFile, Logger: log})
		if err != nil {
			return nil, err
		}
		return st, nil
	}
	if f.secretsDir == "" {
		return nil, fmt.Errorf("%s needs --secrets-dir (the cluster's store key)", v)
	}
	sec, err := datadir.ReadClusterSecrets(f.secretsDir)
	if err != nil {
		return nil, err
	}
	cfg := config.Config{EtcdCA: f.etcdCA, EtcdCert: f.etcdCert, EtcdKey: f.etcdKey}
	return openStore(ctx, spec, cfg, sec.StoreKey, log)
}

// copyWorkers writes records to etcd concurrently (each is one round trip).
const copyWorkers = 16

// storeCopy copies f.from into the empty etcd prefix f.to and verifies it.
func storeCopy(ctx context.Context, f storeFlags, stdout io.Writer, log *slog.Logger) error {
	src, err := f.open(ctx, f.from, log)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	defer src.Close()
	srcRegs, ok := src.(store.RegistrationLister)
	if !ok {
		return fmt.Errorf("source %s cannot list its registrations", f.from)
	}
	tst, err := f.open(ctx, f.to, log)
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	defer tst.Close()
	dst, ok := tst.(*etcdstore.Store)
	if !ok {
		return fmt.Errorf("target %s: copy writes to an etcd store", f.to)
	}
	if empty, err := dst.IsEmpty(ctx); err != nil || !empty {
		if err == nil {
			err = etcdstore.ErrNotEmpty
		}
		return fmt.Errorf("target %s: %w", f.to, err)
	}
	// Jobs wait for a hub or a webhook with their operation, which is not
	// copied: refuse rather than drop a registration half done.
	if n, err := src.CountJobs(ctx); err != nil || n > 0 {
		if err == nil {
			err = fmt.Errorf("%d registrations are waiting in the outbox for their webhook or hub: run dpsd on the source until dpsd_handoff_pending_jobs is 0, stop it, then copy", n)
		}
		return fmt.Errorf("source %s: %w", f.from, err)
	}
	hubs, err := src.ListLinkedHubs(ctx)
	if err != nil {
		return fmt.Errorf("reading the linked hubs: %w", err)
	}
	for _, h := range hubs {
		if _, err := dst.PutLinkedHub(ctx, h, ""); err != nil {
			return fmt.Errorf("copying linked hub %s: %w", h.Name, err)
		}
	}
	groups, err := copyAll(ctx, src.ListGroups, func(ctx context.Context, g *store.Group) error { return dst.ImportGroup(ctx, g) })
	if err != nil {
		return fmt.Errorf("copying groups: %w", err)
	}
	enrollments, err := copyAll(ctx, src.ListEnrollments, func(ctx context.Context, e *store.Enrollment) error { return dst.ImportEnrollment(ctx, e) })
	if err != nil {
		return fmt.Errorf("copying enrollments: %w", err)
	}
	regs, err := copyAll(ctx, srcRegs.ListRegistrations, func(ctx context.Context, r *store.Registration) error { return dst.ImportRegistration(ctx, r) })
	if err != nil {
		return fmt.Errorf("copying registrations: %w", err)
	}
	fmt.Fprintf(stdout, "copied %d linked hubs, %d enrollment groups, %d enrollments, %d registrations from %s to %s\n", len(hubs), groups, enrollments, regs, f.from, f.to)
	if err := verifyCopy(ctx, src, dst); err != nil {
		return fmt.Errorf("verifying the copy: %w", err)
	}
	fmt.Fprintln(stdout, "verified: counts equal, every record equal (secrets included), target consistent")
	return nil
}

// copyAll pages through list and writes every item with put, copyWorkers
// at a time, returning how many it wrote.
func copyAll[T any](ctx context.Context, list func(context.Context, store.Query) (store.Page[T], error), put func(context.Context, T) error) (int, error) {
	n := 0
	q := store.Query{MaxItems: store.MaxMaxItems}
	for {
		p, err := list(ctx, q)
		if err != nil {
			return n, err
		}
		var wg sync.WaitGroup
		errs := make(chan error, len(p.Items))
		sem := make(chan struct{}, copyWorkers)
		for _, it := range p.Items {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				if err := put(ctx, it); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			return n, err
		}
		n += len(p.Items)
		if p.Continuation == "" {
			return n, nil
		}
		q.Continuation = p.Continuation
	}
}

// verifyCopy compares the counts of src and dst, then every record of src
// with dst's (JSON without the etag, and the secrets, which JSON hides),
// then runs dst's consistency check.
func verifyCopy(ctx context.Context, src store.Store, dst *etcdstore.Store) error {
	type counts struct{ e, g, r int }
	count := func(st store.Store) (c counts, err error) {
		if c.e, err = st.CountEnrollments(ctx); err != nil {
			return
		}
		if c.g, err = st.CountGroups(ctx); err != nil {
			return
		}
		c.r, err = st.(store.RegistrationLister).CountRegistrations(ctx)
		return
	}
	cs, err := count(src)
	if err != nil {
		return err
	}
	cd, err := count(dst)
	if err != nil {
		return err
	}
	if cs != cd {
		return fmt.Errorf("counts differ: source %d enrollments, %d groups, %d registrations; target %d, %d, %d", cs.e, cs.g, cs.r, cd.e, cd.g, cd.r)
	}
	if err := compareAll(ctx, src.ListEnrollments, func(e *store.Enrollment) (*store.Enrollment, error) { return dst.GetEnrollment(ctx, e.RegistrationID) },
		func(e *store.Enrollment) any { c := *e; c.ETag = ""; return c }); err != nil {
		return err
	}
	if err := compareAll(ctx, src.ListGroups, func(g *store.Group) (*store.Group, error) { return dst.GetGroup(ctx, g.EnrollmentGroupID) },
		func(g *store.Group) any { c := *g; c.ETag = ""; return c }); err != nil {
		return err
	}
	if err := compareAll(ctx, src.(store.RegistrationLister).ListRegistrations, func(r *store.Registration) (*store.Registration, error) {
		return dst.GetRegistration(ctx, r.RegistrationID)
	}, func(r *store.Registration) any {
		c := *r
		c.ETag = ""
		return struct {
			R        store.Registration
			Hub, Att []byte
		}{c, r.HubKey, r.AttestationHash}
	}); err != nil {
		return err
	}
	// Linked hubs: every one, secrets included (their times are the copy's).
	srcHubs, err := src.ListLinkedHubs(ctx)
	if err != nil {
		return err
	}
	dstHubs, err := dst.ListLinkedHubs(ctx)
	if err != nil {
		return err
	}
	if len(srcHubs) != len(dstHubs) {
		return fmt.Errorf("linked hubs differ: source %d, target %d", len(srcHubs), len(dstHubs))
	}
	for i, h := range srcHubs {
		a, b := *h, *dstHubs[i]
		a.ETag, a.CreatedAt, a.UpdatedAt = "", time.Time{}, time.Time{}
		b.ETag, b.CreatedAt, b.UpdatedAt = "", time.Time{}, time.Time{}
		ja, _ := json.Marshal(a)
		jb, _ := json.Marshal(b)
		if !bytes.Equal(ja, jb) {
			return fmt.Errorf("linked hub %s differs", h.Name)
		}
	}
	return dst.Check(ctx)
}

// compareAll fails on the first record of list whose counterpart (get)
// differs in the form view gives.
func compareAll[T any](ctx context.Context, list func(context.Context, store.Query) (store.Page[T], error), get func(T) (T, error), view func(T) any) error {
	q := store.Query{MaxItems: store.MaxMaxItems}
	for {
		p, err := list(ctx, q)
		if err != nil {
			return err
		}
		for _, it := range p.Items {
			other, err := get(it)
			if err != nil {
				return err
			}
			a, _ := json.Marshal(view(it))
			b, _ := json.Marshal(view(other))
			if !bytes.Equal(a, b) {
				return fmt.Errorf("a record differs:\n source %s\n target %s", a, b)
			}
		}
		if p.Continuation == "" {
			return nil
		}
		q.Continuation = p.Continuation
	}
}

// storeRestore checks the backup file, restores it into f.to and checks the result.
func storeRestore(ctx context.Context, f storeFlags, file string, stdout io.Writer, log *slog.Logger) error {
	fh, err := os.Open(file)
	if err != nil {
		return err
	}
	defer fh.Close()
	hdr, n, err := etcdstore.ReadBackup(fh, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	if _, err := fh.Seek(0, io.SeekStart); err != nil {
		return err
	}
	st, err := f.open(ctx, f.to, log)
	if err != nil {
		return err
	}
	defer st.Close()
	dst, ok := st.(*etcdstore.Store)
	if !ok {
		return fmt.Errorf("%s: restore writes to an etcd store (restore a bbolt backup by putting the file in place)", f.to)
	}
	written, err := dst.Restore(ctx, fh)
	if err != nil {
		return err
	}
	if err := dst.Check(ctx); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "restored %d of %d keys of %s (prefix %s at revision %d) into %s; consistent\n", written, n, file, hdr.Prefix, hdr.Revision, f.to)
	return nil
}

// storeCheck runs the engine's consistency check.
func storeCheck(ctx context.Context, f storeFlags, stdout io.Writer, log *slog.Logger) error {
	st, err := f.open(ctx, f.st, log)
	if err != nil {
		return err
	}
	defer st.Close()
	switch s := st.(type) {
	case *etcdstore.Store:
		err = s.Check(ctx)
	case *bolt.Store:
		err = s.Check()
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: consistent\n", f.st)
	return nil
}
