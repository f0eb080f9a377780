package sds

import "strconv"

// subscription is what the client of one stream, of either kind, subscribes
// to and what the stream has told it: the state both kinds of stream keep
// beside streamBase, under its mu.
type subscription struct {
	// subs are the names subscribed to; wildcard also covers every name
	// the server knows.
	subs     map[string]bool
	wildcard bool
	// versions holds the version of each covered resource the client has:
	// what was sent on this stream, acknowledged or not, so that a NACKed
	// version is not sent again (and, on a delta stream, what the client
	// declared in initial_resource_versions).
	versions map[string]string
	// errored holds the unknown names already answered with an error.
	errored map[string]bool

	nonce     uint64
	lastNonce string
}

func newSubscription() subscription {
	return subscription{
		subs:     map[string]bool{},
		versions: map[string]string{},
		errored:  map[string]bool{},
	}
}

// covers reports whether name is subscribed to, by name or by the wildcard.
func (sub *subscription) covers(name string) bool {
	return sub.subs[name] || (sub.wildcard && isKnown(name))
}

// names lists the names covered, sorted.
func (sub *subscription) names() []string {
	set := make(map[string]bool, len(sub.subs)+len(knownNames))
	for n := range sub.subs {
		set[n] = true
	}
	if sub.wildcard {
		for _, n := range knownNames {
			set[n] = true
		}
	}
	return sortedKeys(set)
}

// forgetUncovered drops the versions and errors of the names no longer
// covered, so that a later subscription to them is answered afresh.
func (sub *subscription) forgetUncovered() {
	for n := range sub.versions {
		if !sub.covers(n) {
			delete(sub.versions, n)
		}
	}
	for n := range sub.errored {
		if !sub.covers(n) {
			delete(sub.errored, n)
		}
	}
}

// nextNonce returns the nonce of a new response, which becomes the one a
// request must carry to acknowledge or reject anything.
func (sub *subscription) nextNonce() string {
	sub.nonce++
	sub.lastNonce = strconv.FormatUint(sub.nonce, 10)
	return sub.lastNonce
}
