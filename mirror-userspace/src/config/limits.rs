//! Every limit the loader enforces, in one place. Each is far beyond what a real config needs,
//! and each keeps `mirror check`, `mirror run` and a SIGHUP reload bounded in time and memory:
//! whatever `check` accepts, `run` starts without a huge allocation, and loading a file costs time
//! linear in its size and a few tens of MB at most. README's Configuration section lists them.
//!
//! Ranges are inclusive and typed `i128`, the type numbers are read as, so that any integer a
//! file can hold is compared, not wrapped (and a float without a fraction, `1e6`, is one).

use std::ops::RangeInclusive;

// The file and its YAML, checked before and while it is parsed.

/// Bytes in a config file (checked before reading it whole, and before parsing).
pub const MAX_FILE_BYTES: usize = 4 << 20;
/// Nesting of collections: flow `[`/`{` and block levels together. libyaml's time per token
/// grows with the flow depth, so deep nesting is refused before libyaml sees it.
pub const MAX_DEPTH: usize = 64;
/// Documents in the stream (`---`).
pub const MAX_DOCUMENTS: usize = 1_000;
/// YAML tokens in the stream: scalars, aliases, and the indicators `-`, `?`, `:`, `,`, `[`, `]`,
/// `{`, `}` (with those libyaml adds for block collections). The parser keeps every event of a
/// document in memory (about 130 bytes each), so this bounds the memory of parsing; ordinary YAML
/// has about one token per 8 bytes, so this is roughly 1.5 MB of it.
pub const MAX_TOKENS: usize = 200_000;
/// Values read (scalars, sequences, mappings) once aliases are expanded: aliases must not turn a
/// small file into a large config. A value takes about two tokens, so a file without aliases that
/// is within [`MAX_TOKENS`] is within this too.
pub const MAX_VALUES: usize = MAX_TOKENS / 2;
/// Bytes of text in the values read, once aliases are expanded.
pub const MAX_TEXT_BYTES: usize = 2 * MAX_FILE_BYTES;
/// Bytes in any one string (a key, a name, a pattern, a header value…).
pub const MAX_STRING_BYTES: usize = 16 << 10;

// capture

/// Entries in `capture.interfaces`.
pub const MAX_INTERFACES: usize = 64;
/// Bytes in an interface name (Linux: IFNAMSIZ - 1).
pub const MAX_INTERFACE_NAME_BYTES: usize = 15;
/// Bytes in an interface glob (`cali*`): a glob may say more than the names it matches.
pub const MAX_INTERFACE_GLOB_BYTES: usize = 64;
/// Entries in `capture.addresses` (each family's kernel prefix map holds 1,024).
pub const MAX_CAPTURE_ADDRESSES: usize = 256;
/// Entries in `capture.ports`.
pub const MAX_PORTS: usize = 64;
/// A port: `capture.ports` entries and a match block's `port`.
pub const PORT: RangeInclusive<i128> = 1..=65_535;
/// `capture.perfPages`: pages per CPU of the perf ring, a power of two. Up to 8192 (32 MiB per CPU
/// on 4 KiB pages, the default's largest): the kernel holds that for every CPU.
pub const PERF_PAGES: RangeInclusive<i128> = 1..=8_192;
/// `capture.batchMs`: the longest a captured request waits to be read, in milliseconds. Over a
/// second, requests of a short connection would wait longer than most clients take to send them.
pub const BATCH_MS: RangeInclusive<i128> = 1..=1_000;

// endpoints

/// Keys in `endpoints` (mirror destinations).
pub const MAX_ENDPOINTS: usize = 256;
/// Addresses of one `endpoints` entry.
pub const MAX_ADDRESSES: usize = 64;
/// Connections to mirrors in all: the addresses of every endpoint × `replay.connections`. Each is
/// a socket and a task.
pub const MAX_MIRROR_CONNECTIONS: i128 = 1_024;

// replay

/// `replay.connections`: kept-alive connections per mirror address.
pub const REPLAY_CONNECTIONS: RangeInclusive<i128> = 1..=256;
/// `replay.queue`: items waiting per connection (tokio's channels allow far more, but nothing
/// needs it).
pub const REPLAY_QUEUE: RangeInclusive<i128> = 1..=65_536;
/// `replay.maxQueuedBytes`: bytes waiting for all mirrors together (64 KiB to 1 GiB).
pub const REPLAY_MAX_QUEUED_BYTES: RangeInclusive<i128> = (64 << 10)..=(1 << 30);
/// `replay.connectTimeoutMs` and `replay.requestTimeoutMs`: 1 ms to 10 minutes.
pub const REPLAY_TIMEOUT_MS: RangeInclusive<i128> = 1..=600_000;
/// `replay.bufferBytes`: requests up to this size are held whole (1 KiB to 64 MiB).
pub const REPLAY_BUFFER_BYTES: RangeInclusive<i128> = (1 << 10)..=(64 << 20);
/// `memory.limitBytes`: the budget for requests in progress (8 MiB to 64 GiB), at least
/// `replay.bufferBytes`.
pub const MEMORY_LIMIT_BYTES: RangeInclusive<i128> = (8 << 20)..=(64 << 30);

// routes

/// Routes in all: our `routes` and every VirtualService's `http` routes together. Each request is
/// matched against them in order.
pub const MAX_ROUTES: usize = 1_000;
/// Match blocks (`match` entries) of one route.
pub const MAX_MATCH_BLOCKS: usize = 64;
/// Entries of one match block's `headers`, `queryParams` and `withoutHeaders`, each.
pub const MAX_CONDITIONS: usize = 64;
/// Entries in one route's `mirrors`: every one is a copy of each request the route takes.
pub const MAX_MIRRORS: usize = 16;
/// A percentage (`mirrorPercentage.value`, `percentage.value`, `mirrorPercent`).
pub const PERCENT: RangeInclusive<f64> = 0.0..=100.0;
/// Entries in a VirtualService's `spec.hosts`.
pub const MAX_HOSTS: usize = 256;
/// Subsets of one DestinationRule.
pub const MAX_SUBSETS: usize = 256;
/// The compiled size of one regex (the regex crate's `size_limit`). A `\w` is about 50 KiB of
/// it (Unicode); `[a-z]{100}` about 7 KiB, `.*SessionID=XXX.*` under 3 KiB.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// The compiled size of all regexes together. Each regex counts as the smallest of 4 KiB,
/// 16 KiB, 64 KiB, 256 KiB and 1 MiB it compiles within (its tier): 4,096 small patterns, or 16
/// of the largest.
pub const REGEX_TOTAL_LIMIT: usize = 16 << 20;
/// The smallest tier of [`REGEX_TOTAL_LIMIT`].
pub const REGEX_TIER_MIN: usize = 4 << 10;
/// The lazy DFA cache of one regex (the regex crate's `dfa_size_limit`, per search direction),
/// filled as it matches: 4 × its tier, at most this. Past what it needs, a regex runs on the
/// slower PikeVM, still in linear time; caches together stay within 8 × REGEX_TOTAL_LIMIT.
pub const REGEX_DFA_SIZE_LIMIT: usize = 256 << 10;

// mirrorPolicies

/// Entries of one policy's `headers.set`, `headers.add` and `headers.remove`, each.
pub const MAX_HEADER_OPS: usize = 64;
/// Entries of one policy's `compare.ignoreHeaders`, `compare.ignoreJsonPaths` and
/// `compare.redact`, each.
pub const MAX_COMPARE_LIST: usize = 64;
/// `compare.maxBodyBytes`: the largest body compared (1 KiB to 64 MiB), held once per side.
pub const COMPARE_MAX_BODY_BYTES: RangeInclusive<i128> = (1 << 10)..=(64 << 20);
/// `compare.maxFieldsPerRoute`: differing fields with a metric label of their own, per route.
pub const COMPARE_MAX_FIELDS: RangeInclusive<i128> = 1..=10_000;
/// `compare.logMaxBytes`: the size at which the differences log is rotated (64 KiB to 16 GiB).
pub const COMPARE_LOG_MAX_BYTES: RangeInclusive<i128> = (64 << 10)..=(16 << 30);
/// `compare.logFiles`: files of the differences log kept, the current one included.
pub const COMPARE_LOG_FILES: RangeInclusive<i128> = 1..=100;
/// `compare.logPerSecond`: records written per second at most.
pub const COMPARE_LOG_PER_SECOND: RangeInclusive<i128> = 1..=100_000;
