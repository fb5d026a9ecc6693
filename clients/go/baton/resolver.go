package baton

import (
	"fmt"
	"net"
	"strings"

	"google.golang.org/grpc/resolver"
)

// addressListResolver resolves "ipv4:host:port,host:port" (and "ipv6:[::1]:port,…"), the
// fixed-list target syntax of gRPC's C core and grpc-js, which grpc-go lacks. It is
// registered per connection (grpc.WithResolvers), never globally.
type addressListResolver struct {
	scheme string
}

func (b addressListResolver) Scheme() string { return b.scheme }

// OverrideAuthority names the first replica: a comma-separated list is not a valid
// :authority, and servers reset streams that carry one.
func (b addressListResolver) OverrideAuthority(target resolver.Target) string {
	first, _, _ := strings.Cut(addressList(target), ",")
	return first
}

func addressList(target resolver.Target) string {
	if target.URL.Opaque != "" {
		return target.URL.Opaque
	}
	return strings.TrimPrefix(target.URL.Path, "/")
}

func (b addressListResolver) Build(target resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	list := addressList(target)
	var endpoints []resolver.Endpoint
	for _, address := range strings.Split(list, ",") {
		host, _, err := net.SplitHostPort(address)
		if err != nil || net.ParseIP(host) == nil {
			return nil, fmt.Errorf("baton: %q in a %s: target is not an IP address with a port", address, b.scheme)
		}
		endpoints = append(endpoints, resolver.Endpoint{Addresses: []resolver.Address{{Addr: address}}})
	}
	if err := cc.UpdateState(resolver.State{Endpoints: endpoints}); err != nil {
		return nil, err
	}
	return staticResolver{}, nil
}

// staticResolver has nothing to re-resolve: the list is the target itself.
type staticResolver struct{}

func (staticResolver) ResolveNow(resolver.ResolveNowOptions) {}
func (staticResolver) Close()                                {}
