// Stands in for connect-redis's testdata/server (which starts a redis-server): the runner
// (run.sh) has started redis and baton already; BATON_TARGET names the baton.
export const port = 0;
export async function connect() {}
export async function disconnect() {}
