package authz

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/castellan-mesh/castellan/authz/mtls"
	"github.com/castellan-mesh/castellan/authz/policy"
	"github.com/castellan-mesh/castellan/authz/rbac"
)

// DefaultRootNamespace is the root namespace when Config.RootNamespace is
// empty.
const DefaultRootNamespace = "istio-system"

// Config configures an Engine. The zero value is usable.
type Config struct {
	// RootNamespace holds mesh-wide policies. Empty means
	// DefaultRootNamespace.
	RootNamespace string
	// TrustDomain and TrustDomainAliases configure principal matching; see
	// rbac.Config.
	TrustDomain        string
	TrustDomainAliases []string
	// SDSCluster is the Envoy cluster of the SDS server; see
	// mtls.RenderOptions.
	SDSCluster string
	// Logger receives reports of rejected policies. Nil means
	// slog.Default().
	Logger *slog.Logger
	// Metrics records the engine's work; nil records nothing.
	Metrics *Metrics
}

// WorkloadConfig is the computed configuration of one workload. It is
// immutable: a change produces a new WorkloadConfig.
type WorkloadConfig struct {
	Workload policy.Workload
	// HTTPFilters and NetworkFilters are the RBAC filters, in order.
	HTTPFilters    []*hcmv3.HttpFilter
	NetworkFilters []*listenerv3.Filter
	// FilterActions holds the action (LOG, DENY or ALLOW) of
	// HTTPFilters[i] and NetworkFilters[i].
	FilterActions []rbacv3.RBAC_Action
	// Policies lists the AuthorizationPolicies applied, sorted.
	Policies []policy.Key
	// Notes carries the translation notes of those policies (rules
	// changed for TCP).
	Notes []string
	// MTLS is the effective mTLS mode and Listener its rendering.
	MTLS     mtls.Result
	Listener *mtls.Listener
	// Generation increases every time this workload's configuration is
	// recomputed.
	Generation uint64
}

// Engine holds the policies and workloads of a mesh and the computed
// configuration of every workload. It is safe for concurrent use.
type Engine struct {
	root       string
	translator *rbac.Translator
	renderer   *mtls.Renderer
	log        *slog.Logger
	metrics    *Metrics

	mu sync.RWMutex
	// Policies.
	authz    map[policy.Key]*authzEntry
	authzNS  map[string]map[policy.Key]struct{} // namespace -> AuthorizationPolicies
	peer     map[policy.Key]*policy.Resource
	peerNS   map[string]map[policy.Key]struct{}
	problems map[policy.Key]error
	// Workloads.
	workloads map[workloadKey]*workloadEntry
	byNS      map[string]map[workloadKey]struct{}
	byLabel   map[labelKey]map[workloadKey]struct{} // (namespace, k, v) and ("", k, v)
	byService map[labelKey]map[workloadKey]struct{} // (namespace, "", service)

	generation uint64
	changed    chan struct{} // closed and replaced on every change
}

type authzEntry struct {
	res *policy.Resource
	tr  *rbac.Translation
}

type workloadKey struct{ ns, name string }

type labelKey struct{ ns, k, v string }

type workloadEntry struct {
	w        policy.Workload
	policies map[policy.Key]struct{} // AuthorizationPolicies that apply
	cfg      *WorkloadConfig
	err      error
}

// New returns an empty Engine. It fails if the configuration cannot give
// valid Envoy settings (for example an SDS cluster name Envoy rejects).
func New(cfg Config) (*Engine, error) {
	renderer, err := mtls.NewRenderer(mtls.RenderOptions{SDSCluster: cfg.SDSCluster})
	if err != nil {
		return nil, fmt.Errorf("authz: %w", err)
	}
	root := cfg.RootNamespace
	if root == "" {
		root = DefaultRootNamespace
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Engine{
		root:       root,
		translator: rbac.NewTranslator(rbac.Config{TrustDomain: cfg.TrustDomain, TrustDomainAliases: cfg.TrustDomainAliases}),
		renderer:   renderer,
		log:        log,
		metrics:    cfg.Metrics,
		authz:      map[policy.Key]*authzEntry{},
		authzNS:    map[string]map[policy.Key]struct{}{},
		peer:       map[policy.Key]*policy.Resource{},
		peerNS:     map[string]map[policy.Key]struct{}{},
		problems:   map[policy.Key]error{},
		workloads:  map[workloadKey]*workloadEntry{},
		byNS:       map[string]map[workloadKey]struct{}{},
		byLabel:    map[labelKey]map[workloadKey]struct{}{},
		byService:  map[labelKey]map[workloadKey]struct{}{},
		changed:    make(chan struct{}),
	}, nil
}

// RootNamespace returns the engine's root namespace.
func (e *Engine) RootNamespace() string { return e.root }

// Changed returns a channel that is closed at the next change of any
// workload's configuration or of the reported problems.
func (e *Engine) Changed() <-chan struct{} {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.changed
}

func (e *Engine) notify() {
	close(e.changed)
	e.changed = make(chan struct{})
}

// Apply adds or replaces a policy and recomputes the workloads it applies
// to, before or after the change. It returns the number of workloads
// recomputed. An AuthorizationPolicy that cannot be translated is reported
// (see Problems) and skipped; the error is also returned. A CUSTOM policy is
// applied (enforced as DENY) and its error reported. An invalid policy
// (Invalid set) is applied in its fail-closed form and its *InvalidError
// reported and returned.
func (e *Engine) Apply(r *policy.Resource) (int, error) {
	if r == nil {
		return 0, errors.New("authz: nil resource")
	}
	key := r.Key()
	switch r.Kind {
	case policy.KindAuthorizationPolicy:
		tr, err := e.translator.Translate(r)
		if tr == nil {
			e.Reject(key, err)
			return 0, err
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		affected := e.authzTargets(e.authz[key])
		for wk := range affected {
			delete(e.workloads[wk].policies, key)
		}
		e.removeAuthz(key)
		ent := &authzEntry{res: r, tr: tr}
		e.authz[key] = ent
		updateSet(e.authzNS, r.Meta.Namespace, key, true)
		for wk := range e.authzTargets(ent) {
			e.workloads[wk].policies[key] = struct{}{}
			affected[wk] = struct{}{}
		}
		changed := e.setProblem(key, err)
		n := e.recompute(affected)
		if changed && n == 0 {
			e.notify()
		}
		e.metrics.applied(r.Kind, n)
		return n, err
	case policy.KindPeerAuthentication:
		e.mu.Lock()
		defer e.mu.Unlock()
		affected := e.peerTargets(e.peer[key])
		e.removePeer(key)
		e.peer[key] = r
		updateSet(e.peerNS, r.Meta.Namespace, key, true)
		for wk := range e.peerTargets(r) {
			affected[wk] = struct{}{}
		}
		changed := e.setProblem(key, r.InvalidError())
		n := e.recompute(affected)
		if changed && n == 0 {
			e.notify()
		}
		e.metrics.applied(r.Kind, n)
		return n, r.InvalidError()
	}
	return 0, fmt.Errorf("authz: unsupported kind %q", r.Kind)
}

// Delete removes a policy and recomputes the workloads it applied to. It
// returns the number of workloads recomputed.
func (e *Engine) Delete(key policy.Key) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	var affected map[workloadKey]struct{}
	switch key.Kind {
	case policy.KindAuthorizationPolicy:
		affected = e.authzTargets(e.authz[key])
		for wk := range affected {
			delete(e.workloads[wk].policies, key)
		}
		e.removeAuthz(key)
	case policy.KindPeerAuthentication:
		affected = e.peerTargets(e.peer[key])
		e.removePeer(key)
	}
	_, hadProblem := e.problems[key]
	delete(e.problems, key)
	n := e.recompute(affected)
	if hadProblem && n == 0 {
		e.notify()
	}
	e.metrics.deleted(key.Kind, n)
	return n
}

// Reject records that the resource key could not be read (err says why).
// The previous valid version of the policy, if any, stays in force: a bad
// update never silently removes a policy. The problem is reported by
// Problems until the policy is applied again or deleted.
func (e *Engine) Reject(key policy.Key, err error) {
	if err == nil {
		err = errors.New("rejected")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.setProblem(key, err)
	e.notify()
}

// setProblem records or clears the problem of key and reports whether the
// set of problems changed.
func (e *Engine) setProblem(key policy.Key, err error) bool {
	if err == nil {
		_, had := e.problems[key]
		delete(e.problems, key)
		return had
	}
	_, kept := e.authz[key]
	if !kept {
		_, kept = e.peer[key]
	}
	// in_force says whether a version of the policy is applied: the
	// previous one after a rejected update, or this one for a policy
	// applied with a caveat (CUSTOM).
	e.log.Warn("authz: policy problem", "policy", key.String(), "in_force", kept, "error", err)
	e.problems[key] = err
	e.metrics.rejected(key.Kind)
	return true
}

// Problems returns the current problems by policy: policies rejected, and
// policies applied with a caveat (CUSTOM).
func (e *Engine) Problems() map[policy.Key]error {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return maps.Clone(e.problems)
}

func (e *Engine) removeAuthz(key policy.Key) {
	if ent, ok := e.authz[key]; ok {
		delete(e.authz, key)
		updateSet(e.authzNS, ent.res.Meta.Namespace, key, false)
	}
}

func (e *Engine) removePeer(key policy.Key) {
	if r, ok := e.peer[key]; ok {
		delete(e.peer, key)
		updateSet(e.peerNS, r.Meta.Namespace, key, false)
	}
}

// SetWorkload adds or replaces a workload and computes its configuration.
func (e *Engine) SetWorkload(w policy.Workload) {
	w.Labels = maps.Clone(w.Labels)
	w.Services = slices.Clone(w.Services)
	wk := workloadKey{w.Namespace, w.Name}
	e.mu.Lock()
	defer e.mu.Unlock()
	if old, ok := e.workloads[wk]; ok {
		e.unindexWorkload(wk, old.w)
	}
	ent := &workloadEntry{w: w, policies: map[policy.Key]struct{}{}}
	e.workloads[wk] = ent
	e.indexWorkload(wk, w)
	for _, ns := range e.scopeNamespaces(w.Namespace) {
		for key := range e.authzNS[ns] {
			if e.authz[key].res.AppliesTo(w, e.root) {
				ent.policies[key] = struct{}{}
			}
		}
	}
	e.compute(ent)
	e.metrics.recomputed(1)
	e.notify()
}

// DeleteWorkload removes a workload.
func (e *Engine) DeleteWorkload(namespace, name string) {
	wk := workloadKey{namespace, name}
	e.mu.Lock()
	defer e.mu.Unlock()
	if old, ok := e.workloads[wk]; ok {
		e.unindexWorkload(wk, old.w)
		delete(e.workloads, wk)
		e.notify()
	}
}

// Workload returns the computed configuration of a registered workload.
// The error is set when the configuration could not be built; cfg is then
// the last good one, or nil.
func (e *Engine) Workload(namespace, name string) (cfg *WorkloadConfig, ok bool, err error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	ent, ok := e.workloads[workloadKey{namespace, name}]
	if !ok {
		return nil, false, nil
	}
	return ent.cfg, true, ent.err
}

// Compute returns the configuration of w without registering it.
func (e *Engine) Compute(w policy.Workload) (*WorkloadConfig, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	ent := &workloadEntry{w: w, policies: map[policy.Key]struct{}{}}
	for _, ns := range e.scopeNamespaces(w.Namespace) {
		for key := range e.authzNS[ns] {
			if e.authz[key].res.AppliesTo(w, e.root) {
				ent.policies[key] = struct{}{}
			}
		}
	}
	cfg, err := e.build(ent, 0)
	return cfg, err
}

// scopeNamespaces are the namespaces whose policies can apply to a
// workload in ns.
func (e *Engine) scopeNamespaces(ns string) []string {
	if ns == e.root {
		return []string{ns}
	}
	return []string{ns, e.root}
}

// recompute rebuilds the configurations of the workloads in affected, whose
// policy sets are already up to date, and returns how many there were.
func (e *Engine) recompute(affected map[workloadKey]struct{}) int {
	for wk := range affected {
		if ent, ok := e.workloads[wk]; ok {
			e.compute(ent)
		}
	}
	e.metrics.recomputed(len(affected))
	if len(affected) > 0 {
		e.notify()
	}
	return len(affected)
}

func (e *Engine) compute(ent *workloadEntry) {
	e.generation++
	cfg, err := e.build(ent, e.generation)
	if err != nil {
		// Keep serving the last good configuration; report the failure.
		e.log.Error("authz: building workload configuration", "workload", ent.w.String(), "error", err)
		ent.err = err
		return
	}
	ent.cfg, ent.err = cfg, nil
}

// build assembles the configuration from the cached translations.
func (e *Engine) build(ent *workloadEntry, gen uint64) (*WorkloadConfig, error) {
	keys := slices.SortedFunc(maps.Keys(ent.policies), compareKeys)
	trs := make([]*rbac.Translation, 0, len(keys))
	var notes []string
	for _, k := range keys {
		tr := e.authz[k].tr
		trs = append(trs, tr)
		notes = append(notes, tr.Notes...)
	}
	filters, err := rbac.Build(trs)
	if err != nil {
		return nil, fmt.Errorf("authz: %s: %w", ent.w, err)
	}
	var pas []*policy.Resource
	for _, ns := range e.scopeNamespaces(ent.w.Namespace) {
		for k := range e.peerNS[ns] {
			pas = append(pas, e.peer[k])
		}
	}
	res := mtls.Resolve(pas, ent.w, e.root)
	lis, err := e.renderer.Render(res)
	if err != nil {
		return nil, fmt.Errorf("authz: %s: %w", ent.w, err)
	}
	return &WorkloadConfig{
		Workload:       ent.w,
		HTTPFilters:    filters.HTTP,
		NetworkFilters: filters.Network,
		FilterActions:  filters.Actions,
		Policies:       keys,
		Notes:          notes,
		MTLS:           res,
		Listener:       lis,
		Generation:     gen,
	}, nil
}

func compareKeys(a, b policy.Key) int {
	return cmp.Or(
		strings.Compare(a.Namespace, b.Namespace),
		strings.Compare(a.Name, b.Name),
		strings.Compare(string(a.Kind), string(b.Kind)),
	)
}
