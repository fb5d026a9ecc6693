// connect-redis's test uses ids like "123" and "s0"; Baton takes 22..=256 characters of
// [A-Za-z0-9_-] (its one deliberate difference), so each becomes a longer id of its own.
export const PREFIX = "sess:";
const PADDING = "connect-redis-test-id-";

export function batonId(id) {
  return PADDING + id;
}
