//! The one list of programs that the tests, the demo, the VM runs and the benchmark invoke, with
//! where each comes from. `setup` installs every one that is missing; a test below fails if test or
//! xtask code invokes a program that is not listed here (a fresh machine would lack it).

/// Where a program comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A Debian package.
    Debian(&'static str),
    /// A PyPI package, installed with pip.
    Pypi(&'static str),
    /// Part of the Rust toolchain or of every machine of this kind (rustup, cargo, sh, dpkg...).
    Base,
    /// Built with `cargo install` by the task that needs it (bpf-linker by setup, against nightly's
    /// LLVM; cargo-fuzz by `cargo xtask fuzz`).
    CargoInstall,
}

/// (program, where it comes from).
pub const TOOLS: &[(&str, Source)] = &[
    // The machine's own: toolchain, shell and package managers.
    ("cargo", Source::Base),
    ("rustc", Source::Base),
    ("rustup", Source::Base),
    ("sh", Source::Base),
    ("id", Source::Base),
    ("apt-get", Source::Base),
    ("dpkg-query", Source::Base),
    ("apt-cache", Source::Base),
    ("python3", Source::Base),
    ("bpf-linker", Source::CargoInstall),
    ("cargo-fuzz", Source::CargoInstall),
    // Namespaces, veth, routes, tc (tests, demo, bench).
    ("ip", Source::Debian("iproute2")),
    ("tc", Source::Debian("iproute2")),
    // The demo's client.
    ("curl", Source::Debian("curl")),
    // A black-holing mirror in the failure tests.
    ("nft", Source::Debian("nftables")),
    // Least-privilege test: run the daemon as nobody with three capabilities.
    ("setpriv", Source::Debian("util-linux")),
    // Metrics endpoint test: the daemon under a low fd limit.
    ("prlimit", Source::Debian("util-linux")),
    // The benchmark's primary, mirror and the nginx mirror-module peer; its load generator.
    ("nginx", Source::Debian("nginx")),
    ("wrk", Source::Debian("wrk")),
    ("chromium", Source::Debian("chromium")), // `mirror report`'s page, opened headless (tests/tests/report.rs)
    // The bench builds its GoReplay peer from source (../shared/peers/build-goreplay.sh).
    ("bash", Source::Base),
    ("go", Source::Debian("golang-go")),
    // The kernel matrix: virtme-ng boots Debian's kernels under qemu, with busybox in its initramfs.
    ("qemu-system-x86_64", Source::Debian("qemu-system-x86")),
    ("busybox", Source::Debian("busybox-static")),
    ("vng", Source::Pypi("virtme-ng==1.42")),
];

/// Python modules the test scripts import (tests/scripts/*.py), from PyPI: (module, package).
pub const PYTHON_MODULES: &[(&str, &str)] = &[
    // Crafted TCP segments (bad checksums, no ACK, out-of-window RST, spoofed sources).
    ("scapy", "scapy==2.6.1"),
];

/// The Debian packages of `TOOLS`, deduplicated.
pub fn debian_packages() -> Vec<&'static str> {
    let mut v: Vec<&str> = TOOLS
        .iter()
        .filter_map(|(_, s)| match s {
            Source::Debian(p) => Some(*p),
            _ => None,
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The PyPI packages of `TOOLS`.
pub fn pypi_packages() -> Vec<&'static str> {
    TOOLS
        .iter()
        .filter_map(|(_, s)| match s {
            Source::Pypi(p) => Some(*p),
            _ => None,
        })
        .collect()
}

/// Whether `program` is on the list.
#[cfg(test)]
pub fn listed(program: &str) -> bool {
    TOOLS.iter().any(|(p, _)| *p == program)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Programs named where test and xtask code starts a process: `Command::new("x")`,
    /// `ns_run(ns, "x", ...)`, `have("x")`, `Path::new("/usr/bin/x")`, and `tools::need("x")`.
    fn invoked(src: &str) -> Vec<String> {
        let mut found = Vec::new();
        for pat in ["Command::new(\"", "have(\"", "Path::new(\"/usr/bin/", "Path::new(\"/usr/sbin/", "need(\""] {
            for (i, _) in src.match_indices(pat) {
                let rest = &src[i + pat.len()..];
                let name: String = rest.chars().take_while(|c| *c != '"').collect();
                found.push(name);
            }
        }
        for (i, _) in src.match_indices("ns_run(") {
            // ns_run(<ns expr>, "<program>", ...)
            let rest = &src[i..];
            let line = &rest[..rest.find('\n').unwrap_or(rest.len())];
            if line.starts_with("ns_run(ns: ") {
                continue; // the definition
            }
            // The program is the second argument when it is a literal.
            if let Some(q) = line.find(", ")
                && line[q + 2..].starts_with('"')
            {
                let name: String = line[q + 3..].chars().take_while(|c| *c != '"').collect();
                found.push(name);
            }
        }
        found.retain(|n| !n.is_empty() && !n.starts_with("target/") && !n.contains('{'));
        found
    }

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn every_program_the_tests_and_xtask_invoke_is_installed_by_setup() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let mut files = Vec::new();
        for dir in ["tests", "xtask/src", "mirror-userspace/tests"] {
            rust_files(&root.join(dir), &mut files);
        }
        assert!(files.len() > 5, "found only {files:?}");
        let mut missing = Vec::new();
        let mut seen = 0;
        for f in &files {
            let src = std::fs::read_to_string(f).unwrap();
            for name in invoked(&src) {
                seen += 1;
                if !listed(&name) && f.file_name().is_some_and(|n| n != "tools.rs") {
                    missing.push(format!("{}: {name}", f.display()));
                }
            }
        }
        assert!(seen > 10, "the scan found only {seen} invocations: it is broken");
        assert!(
            missing.is_empty(),
            "invoked but not installed by `cargo xtask setup` (add to xtask/src/tools.rs): {missing:?}"
        );
    }

    #[test]
    fn the_scan_finds_what_it_should() {
        let src = r#"Command::new("nft"); ns_run(&topo.mirror, "nft", &[]); have("wrk"); Path::new("/usr/sbin/nginx")"#;
        assert_eq!(invoked(src), ["nft", "wrk", "nginx", "nft"]);
        assert!(!listed("definitely-not-a-tool"));
    }
}
