package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// No Docker engine or systemd runs here: these tests parse the deploy
// files and check the settings the deployment depends on, and that every
// variable they set is one the binary understands.

const deployDir = "../../deploy"

type composeFile struct {
	Version  string                    `yaml:"version"`
	Services map[string]composeService `yaml:"services"`
	Networks map[string]struct {
		External bool   `yaml:"external"`
		Name     string `yaml:"name"`
		Driver   string `yaml:"driver"`
	} `yaml:"networks"`
	Volumes map[string]*struct {
		External bool   `yaml:"external"`
		Name     string `yaml:"name"`
	} `yaml:"volumes"`
}

type composeService struct {
	Image       string            `yaml:"image"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Ports       []struct {
		Target    int    `yaml:"target"`
		Published int    `yaml:"published"`
		Protocol  string `yaml:"protocol"`
		Mode      string `yaml:"mode"`
	} `yaml:"ports"`
	Networks    yaml.Node         `yaml:"networks"`
	Volumes     []string          `yaml:"volumes"`
	Sysctls     map[string]string `yaml:"sysctls"`
	Healthcheck struct {
		Test     []string `yaml:"test"`
		Interval string   `yaml:"interval"`
		Disable  bool     `yaml:"disable"`
	} `yaml:"healthcheck"`
	StopGracePeriod string `yaml:"stop_grace_period"`
	Deploy          struct {
		Replicas     int `yaml:"replicas"`
		UpdateConfig struct {
			Order         string `yaml:"order"`
			FailureAction string `yaml:"failure_action"`
		} `yaml:"update_config"`
		RollbackConfig struct {
			Order string `yaml:"order"`
		} `yaml:"rollback_config"`
	} `yaml:"deploy"`
}

func readCompose(t *testing.T, name string) *composeFile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(deployDir, name))
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return &c
}

// interpolate resolves ${VAR:-default} and ${VAR:?msg} as docker stack
// deploy does, with example values.
func interpolate(v string) string {
	return regexp.MustCompile(`\$\{([A-Z_]+)(:[-?][^}]*)?\}`).ReplaceAllStringFunc(v, func(m string) string {
		if strings.Contains(m, ":-") {
			return strings.TrimSuffix(m[strings.Index(m, ":-")+2:], "}")
		}
		return "example-" + strings.ToLower(strings.Trim(m, "${}:?"))
	})
}

// composeConfig checks that every variable a compose service sets is one
// `go-proxy serve` reads, and returns the configuration they make.
func composeConfig(t *testing.T, p composeService) *config {
	t.Helper()
	envs := map[string]string{}
	for k, v := range p.Environment {
		envs[k] = interpolate(v)
	}
	var help strings.Builder
	run([]string{"-h"}, env(nil), io.Discard, &help)
	for k := range envs {
		if !strings.Contains(help.String(), "env "+k+",") {
			t.Errorf("compose sets %s, which go-proxy does not read", k)
		}
	}
	cfg, err := parseConfig(nil, env(envs), io.Discard)
	if err != nil {
		t.Fatalf("the compose environment does not parse: %v", err)
	}
	return cfg
}

func TestComposeSwarm(t *testing.T) {
	c := readCompose(t, "docker-compose.swarm.yml")
	p, ok := c.Services["go-proxy"]
	if !ok {
		t.Fatal("no go-proxy service")
	}
	if p.Deploy.UpdateConfig.Order != "start-first" || p.Deploy.RollbackConfig.Order != "start-first" {
		t.Errorf("rolling updates must start the new task first: %+v", p.Deploy)
	}
	published := map[int]int{}
	for _, port := range p.Ports {
		published[port.Target] = port.Published
	}
	if published[80] != 80 || published[443] != 443 {
		t.Errorf("80 and 443 must be published: %+v", p.Ports)
	}
	if _, ok := published[81]; ok {
		t.Error("the registry port must not be published (web-net only)")
	}
	if _, ok := published[9090]; ok {
		t.Error("the admin port must not be published")
	}
	var nets map[string]struct {
		Aliases []string `yaml:"aliases"`
	}
	if err := p.Networks.Decode(&nets); err != nil {
		t.Fatal(err)
	}
	if n := c.Networks["web-net"]; !n.External || n.Name != "web-net" {
		t.Errorf("web-net must be the external overlay network: %+v", n)
	}
	if _, ok := nets["web-net"]; !ok || len(nets) != 1 {
		t.Errorf("go-proxy must be on web-net only: %v", nets)
	}
	if !contains(nets["web-net"].Aliases, "go-proxy") {
		t.Error("the go-proxy alias on web-net is what sidecars of other stacks dial")
	}
	if len(p.Healthcheck.Test) < 3 || p.Healthcheck.Test[0] != "CMD" || p.Healthcheck.Test[2] != "healthcheck" {
		t.Errorf("healthcheck must run `go-proxy healthcheck` (no curl in the image): %v", p.Healthcheck.Test)
	}
	if p.Sysctls["net.ipv4.ip_unprivileged_port_start"] != "0" {
		t.Errorf("sysctls: %v", p.Sysctls)
	}

	cfg := composeConfig(t, p)
	if cfg.RegistryAddr != ":81" || cfg.HTTPAddr != ":80" || cfg.HTTPSAddr != ":443" || !cfg.RedirectHTTPS || cfg.RegistryToken == "" {
		t.Errorf("compose configuration: %+v", cfg)
	}
	// The state file, certificates and routes file are on mounts.
	mounted := func(file string) bool {
		for _, v := range p.Volumes {
			parts := strings.Split(v, ":")
			if len(parts) >= 2 && (file == parts[1] || strings.HasPrefix(file, strings.TrimSuffix(parts[1], "/")+"/")) {
				return true
			}
		}
		return false
	}
	for _, f := range []string{cfg.StateFile, cfg.CertsDir + "/live", cfg.RoutesFile} {
		if f == "" || !mounted(f) {
			t.Errorf("%q is not on a volume: %v", f, p.Volumes)
		}
	}
	for _, v := range p.Volumes {
		if vol := strings.Split(v, ":")[0]; !strings.HasPrefix(vol, "/") {
			if _, declared := c.Volumes[vol]; !declared {
				t.Errorf("volume %s is not declared", vol)
			}
		}
	}
	if state := strings.Split(p.Volumes[0], ":"); path.Dir(cfg.StateFile) != state[1] || strings.HasPrefix(state[0], "/") {
		t.Errorf("the first volume should be the named volume of the state file: %v", p.Volumes[0])
	}
	if p.StopGracePeriod == "" || cfg.ShutdownTimeout.String() == "" {
		t.Error("stop_grace_period must cover the shutdown timeout")
	}
}

func TestExampleStackUsesSidecar(t *testing.T) {
	c := readCompose(t, "example-stack.yml")
	var sidecar *composeService
	for name, s := range c.Services {
		if len(s.Command) > 0 && s.Command[0] == "sidecar" {
			s := s
			sidecar = &s
			t.Logf("sidecar service: %s", name)
		}
	}
	if sidecar == nil {
		t.Fatal("no service runs `go-proxy sidecar`")
	}
	for k := range sidecar.Environment {
		if !regexp.MustCompile(`(?m)^  ` + k + ` `).MatchString(sidecarUsage) {
			t.Errorf("example sets %s, which the sidecar does not read", k)
		}
	}
	envs := map[string]string{}
	for k, v := range sidecar.Environment {
		envs[k] = interpolate(v)
	}
	cfg, err := parseSidecarEnv(env(envs))
	if err != nil {
		t.Fatalf("example sidecar environment: %v", err)
	}
	if cfg.RegistryAddr != "go-proxy:81" || cfg.Backend != "http://whoami:80" || cfg.HealthPath == "" || cfg.Token == "" {
		t.Errorf("example sidecar: %+v", cfg)
	}
	if n := c.Networks["web-net"]; !n.External {
		t.Error("the example must join the external web-net")
	}
}

func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(deployDir, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	df := string(data)
	froms := regexp.MustCompile(`(?m)^FROM\s+(\S+)`).FindAllStringSubmatch(df, -1)
	if len(froms) < 2 {
		t.Fatalf("not multi-stage: %v", froms)
	}
	final := froms[len(froms)-1][1]
	if !strings.HasPrefix(final, "gcr.io/distroless/static") && final != "scratch" {
		t.Errorf("final image %s is not distroless/static or scratch", final)
	}
	for _, want := range []string{
		"CGO_ENABLED=0", "./cmd/go-proxy", "setcap cap_net_bind_service=+ep", `USER 65532:65532`,
		`HEALTHCHECK`, `"/go-proxy", "healthcheck"`, "PROXY_STATE_FILE=/var/lib/go-proxy/state.json", `ENTRYPOINT ["/go-proxy"]`,
	} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	if regexp.MustCompile(`(?m)^USER\s+(root|0)\b`).MatchString(df) {
		t.Error("Dockerfile runs as root")
	}
}

// unit reads a systemd unit file into section → key → values.
func unit(t *testing.T, name string) map[string]map[string][]string {
	t.Helper()
	f, err := os.Open(filepath.Join(deployDir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
			out[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: bad line %q", name, line)
			}
			out[section][k] = append(out[section][k], v)
		}
	}
	return out
}

func TestSystemdUnits(t *testing.T) {
	svc := unit(t, "go-proxy.service")["Service"]
	if got := svc["ExecStart"]; len(got) != 1 || !strings.HasSuffix(got[0], "go-proxy serve") {
		t.Errorf("ExecStart: %v", got)
	}
	if svc["User"] == nil || svc["User"][0] == "root" {
		t.Error("the service must run as a dedicated user")
	}
	if !contains(svc["AmbientCapabilities"], "CAP_NET_BIND_SERVICE") {
		t.Error("the registry port needs CAP_NET_BIND_SERVICE")
	}
	if !contains(svc["StateDirectory"], "go-proxy") || !strings.Contains(fmt.Sprint(svc["Environment"]), "PROXY_STATE_FILE=/var/lib/go-proxy/") {
		t.Error("the state file must live in the StateDirectory")
	}
	if !contains(svc["KillSignal"], "SIGTERM") {
		t.Error("KillSignal")
	}
	sockets := strings.Fields(strings.Join(svc["Sockets"], " "))
	names := map[string]string{}
	for _, s := range sockets {
		u := unit(t, s)["Socket"]
		names[u["FileDescriptorName"][0]] = u["ListenStream"][0]
	}
	// The names listen.go maps to listeners.
	if names["http"] != "80" || names["https"] != "443" {
		t.Errorf("socket units: %v", names)
	}
}

// TestRoutesExampleApplies: the example routes file parses and passes the
// registry's validation.
func TestRoutesExampleApplies(t *testing.T) {
	p := startProxy(t, "-routes-file", filepath.Join(deployDir, "routes.example.yml"))
	if !strings.Contains(p.logs.String(), "static routes applied") {
		t.Fatalf("example routes not applied:\n%s", p.logs)
	}
}

// TestHealthcheckCommand: `go-proxy healthcheck` is 0 against a serving
// proxy, 1 when nothing answers.
func TestHealthcheckCommand(t *testing.T) {
	p := startProxy(t)
	var stderr strings.Builder
	if code := run([]string{"healthcheck", "-admin-addr", p.ls.Admin.String()}, env(nil), io.Discard, &stderr); code != 0 {
		t.Fatalf("healthy proxy: exit %d: %s", code, stderr.String())
	}
	_, port, _ := strings.Cut(p.ls.Admin.String(), ":")
	if code := run([]string{"healthcheck"}, env(map[string]string{"PROXY_ADMIN_ADDR": ":" + port}), io.Discard, &stderr); code != 0 {
		t.Fatalf("PROXY_ADMIN_ADDR :%s: exit %d: %s", port, code, stderr.String())
	}
	p.stop()
	if code := run([]string{"healthcheck", "-admin-addr", p.ls.Admin.String(), "-timeout", "1s"}, env(nil), io.Discard, &stderr); code != 1 {
		t.Fatalf("stopped proxy: exit %d", code)
	}
	if probeAddr("[::]:9090") != "127.0.0.1:9090" || probeAddr("10.0.0.1:9090") != "10.0.0.1:9090" {
		t.Error("probeAddr")
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestComposeSwarmHA checks the three-replica example: every replica on
// the same etcd cluster, three etcd members that name each other, each
// with its own volume, and etcd reachable only on its own network.
func TestComposeSwarmHA(t *testing.T) {
	c := readCompose(t, "docker-compose.swarm-ha.yml")
	p, ok := c.Services["go-proxy"]
	if !ok {
		t.Fatal("no go-proxy service")
	}
	if p.Deploy.Replicas != 3 || p.Deploy.UpdateConfig.Order != "start-first" {
		t.Errorf("want 3 replicas updated start-first: %+v", p.Deploy)
	}
	cfg := composeConfig(t, p)
	eps, err := cfg.storeEndpoints()
	if err != nil || len(eps) != 3 || cfg.StateFile != "" {
		t.Fatalf("replicas must share etcd and keep no state file: %v %v %q", eps, err, cfg.StateFile)
	}
	var members []string
	volumes := map[string]bool{}
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("etcd%d", i)
		e, ok := c.Services[name]
		if !ok {
			t.Fatalf("no %s service", name)
		}
		if !strings.Contains(strings.Join(eps, ","), "//"+name+":2379") {
			t.Errorf("go-proxy does not list %s among its endpoints %v", name, eps)
		}
		args := strings.Join(e.Command, " ")
		if !strings.Contains(args, "--name="+name) ||
			!strings.Contains(args, "--initial-cluster=etcd1=http://etcd1:2380,etcd2=http://etcd2:2380,etcd3=http://etcd3:2380") {
			t.Errorf("%s: %s", name, args)
		}
		members = append(members, name)
		if len(e.Volumes) != 1 || volumes[e.Volumes[0]] {
			t.Errorf("%s needs a data volume of its own: %v", name, e.Volumes)
		}
		volumes[e.Volumes[0]] = true
		if len(e.Ports) != 0 {
			t.Errorf("%s must not publish ports", name)
		}
		var nets []string
		if err := e.Networks.Decode(&nets); err != nil || len(nets) != 1 || nets[0] != "store-net" {
			t.Errorf("%s must be on store-net only: %v %v", name, nets, err)
		}
	}
	if len(members) != 3 {
		t.Fatal("want three etcd members")
	}
}
