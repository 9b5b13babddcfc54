package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"cairn/cluster/pki"
)

const clusterUsage = `usage: cairn cluster certs DIR --nodes N1,N2,... [--hosts H1,H2,...] [--json]

Writes a cluster CA (DIR/ca.pem, DIR/ca.key) and, for each node, a
certificate and key (DIR/NODE.pem, DIR/NODE.key) for mutual TLS between the
nodes, and prints the [tls] lines of each node's config. Every certificate
names its node, localhost, 127.0.0.1, ::1 and the --hosts (DNS names or IP
addresses: list the addresses peers dial, such as raft.bind's host). If DIR
holds a CA already, it issues the new nodes' certificates. Existing files are
never overwritten.
`

// certsNode is one node's files in the output of cluster certs.
type certsNode struct {
	Name     string `json:"name"`
	CertFile string `json:"cert_file"`
	KeyFile  string `json:"key_file"`
}

// certsResult is the --json output of cluster certs.
type certsResult struct {
	CAFile    string      `json:"ca_file"`
	CAKeyFile string      `json:"ca_key_file"`
	CAReused  bool        `json:"ca_reused"`
	Nodes     []certsNode `json:"nodes"`
}

// clusterCommand runs `cairn cluster ...` (args after "cluster"), which
// works on local files and needs no daemon.
func clusterCommand(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("cairn cluster", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	nodes := fs.String("nodes", "", "comma-separated node names")
	hosts := fs.String("hosts", "", "comma-separated extra DNS names or IP addresses for every certificate")
	asJSON := fs.Bool("json", false, "JSON output")
	help := fs.Bool("help", false, "")
	fs.BoolVar(help, "h", false, "")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *help {
		fmt.Fprint(out, clusterUsage)
		return nil
	}
	if len(pos) == 0 || pos[0] != "certs" {
		return fmt.Errorf("%w: cluster needs a subcommand: certs", errUsage)
	}
	if len(pos) != 2 {
		return fmt.Errorf("%w: cluster certs takes one argument, the directory", errUsage)
	}
	if *nodes == "" {
		return fmt.Errorf("%w: cluster certs needs --nodes", errUsage)
	}
	dir, err := filepath.Abs(pos[1])
	if err != nil {
		return err
	}
	names, extra := splitList(*nodes), splitList(*hosts)
	res := certsResult{CAFile: filepath.Join(dir, pki.CACertFile), CAKeyFile: filepath.Join(dir, pki.CAKeyFile)}
	if _, err := os.Stat(res.CAFile); err == nil {
		res.CAReused = true // WriteCluster checks that the pair is whole and valid
	}
	if err := pki.WriteCluster(dir, names, extra); err != nil {
		return err
	}
	for _, n := range names {
		c, k := pki.NodeFiles(dir, n)
		res.Nodes = append(res.Nodes, certsNode{Name: n, CertFile: c, KeyFile: k})
	}
	c := &cli{out: out, json: *asJSON}
	return c.print(res, func(w io.Writer) { printCerts(w, res) })
}

// printCerts renders what cluster certs wrote. w is a tabwriter; the
// config lines have no tabs, so it passes them through.
func printCerts(w io.Writer, res certsResult) {
	if res.CAReused {
		fmt.Fprintf(w, "used the CA in %s\n", res.CAFile)
	} else {
		fmt.Fprintf(w, "wrote %s (the CA certificate: copy it to every node)\n", res.CAFile)
		fmt.Fprintf(w, "wrote %s (the CA key: keep it off the nodes; it issues new nodes' certificates)\n", res.CAKeyFile)
	}
	for _, n := range res.Nodes {
		fmt.Fprintf(w, "wrote %s, %s\n", n.CertFile, n.KeyFile)
	}
	for _, n := range res.Nodes {
		fmt.Fprintf(w, "\n# %s's config (copy %s, %s and %s to it and adjust the paths if they move):\n",
			n.Name, filepath.Base(res.CAFile), filepath.Base(n.CertFile), filepath.Base(n.KeyFile))
		fmt.Fprintf(w, "[tls]\nca_file = %s\ncert_file = %s\nkey_file = %s\n", strconv.Quote(res.CAFile), strconv.Quote(n.CertFile), strconv.Quote(n.KeyFile))
	}
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
