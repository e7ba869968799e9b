//! The release artefacts that scripts/dist.sh builds into target/dist/ (or the directory in
//! `LASTCALL_DIST`): the static binaries for x86_64 and aarch64 in their tarballs, the .deb and
//! .rpm of both architectures, and SHA256SUMS. The aarch64 binary runs here under qemu's
//! user-mode emulator (Debian's qemu-user-static). Each binary passes a real scale-in against the
//! emulator: the x86_64 one natively, the aarch64 one under qemu.
//!
//! Ignored by a plain `cargo test`: the artefacts take a release build of both targets.
//! scripts/test.sh runs scripts/dist.sh and then these with `--ignored`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::host::*;
use common::*;

const LONG: Duration = Duration::from_secs(60);
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The most a binary may weigh (issue: "each binary stays ≤ 12 MB").
const MAX_SIZE: u64 = 12_000_000;

/// One architecture's artefacts.
struct Target {
    triple: &'static str,
    /// What `readelf --file-header` says of its binaries.
    machine: &'static str,
    deb_arch: &'static str,
    rpm_arch: &'static str,
    /// The emulator that runs its binaries here, if this machine cannot.
    runner: Option<&'static str>,
}

const TARGETS: [Target; 2] = [
    Target {
        triple: "x86_64-unknown-linux-musl",
        machine: "Advanced Micro Devices X86-64",
        deb_arch: "amd64",
        rpm_arch: "x86_64",
        runner: None,
    },
    Target {
        triple: "aarch64-unknown-linux-musl",
        machine: "AArch64",
        deb_arch: "arm64",
        rpm_arch: "aarch64",
        runner: Some("qemu-aarch64-static"),
    },
];

/// The directory of the artefacts.
fn dist() -> PathBuf {
    let dir = std::env::var_os("LASTCALL_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| top("target/dist"));
    assert!(
        dir.join("SHA256SUMS").is_file(),
        "no artefacts in {}: run scripts/dist.sh (or set LASTCALL_DIST)",
        dir.display()
    );
    dir
}

impl Target {
    fn name(&self) -> String {
        format!("lastcall-{VERSION}-{}", self.triple)
    }

    fn tarball(&self) -> String {
        format!("{}.tar.gz", self.name())
    }

    fn deb(&self) -> String {
        format!("lastcall_{VERSION}-1_{}.deb", self.deb_arch)
    }

    fn rpm(&self) -> String {
        format!("lastcall-{VERSION}-1.{}.rpm", self.rpm_arch)
    }

    /// The tarball, unpacked once per test run; returns its top directory.
    fn unpacked(&self) -> PathBuf {
        static UNPACKED: OnceLock<PathBuf> = OnceLock::new();
        let base = UNPACKED.get_or_init(|| {
            let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dist-unpacked");
            if base.exists() {
                fs::remove_dir_all(&base).unwrap();
            }
            for target in &TARGETS {
                let dir = base.join(target.triple);
                fs::create_dir_all(&dir).unwrap();
                let out = run(Command::new("tar")
                    .args(["--extract", "--same-permissions", "--file"])
                    .arg(dist().join(target.tarball()))
                    .arg("--directory")
                    .arg(&dir));
                assert!(out.status.success(), "tar --extract: {}", described(&out));
            }
            base
        });
        base.join(self.triple).join(self.name())
    }

    /// The binary, from the tarball.
    fn binary(&self) -> PathBuf {
        self.unpacked().join("lastcall")
    }

    /// The emulator's path, when this machine needs one for this architecture.
    fn runner(&self) -> Option<PathBuf> {
        self.runner.map(system_tool)
    }

    /// A command that runs `binary` (of this architecture) here.
    fn command(&self, binary: &Path) -> Command {
        match self.runner() {
            Some(runner) => {
                let mut cmd = Command::new(runner);
                cmd.arg(binary);
                cmd
            }
            None => Command::new(binary),
        }
    }

    /// The binary runs, says its version, and validates `config`.
    fn assert_runs_and_accepts(&self, binary: &Path, config: &Path) {
        let out = run(self.command(binary).arg("--version"));
        assert!(
            out.status.success(),
            "{}: lastcall --version: {}",
            self.triple,
            described(&out)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("lastcall {VERSION}\n")
        );
        let out = run(self
            .command(binary)
            .args(["check", "--offline", "--config"])
            .arg(config));
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains(": valid"),
            "{}: lastcall check --offline on {}: {}",
            self.triple,
            config.display(),
            described(&out)
        );
    }
}

/// An archive's entries as `tar --list --verbose` shows them, by name without a leading "./":
/// mode and owner, "-rw------- 0/0" (from "-rw------- 0/0 1609 2026-11-21 06:25 ./NAME").
fn tar_listing(archive: &Path) -> BTreeMap<String, String> {
    let out = run(Command::new("tar")
        .args(["--list", "--verbose", "--numeric-owner", "--file"])
        .arg(archive));
    assert!(out.status.success(), "tar --list: {}", described(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[5].trim_start_matches("./").to_string(),
                format!("{} {}", f[0], f[1]),
            )
        })
        .collect()
}

/// readelf's answer about `binary`.
fn readelf(args: &[&str], binary: &Path) -> String {
    let out = run(Command::new(system_tool("readelf")).args(args).arg(binary));
    assert!(
        out.status.success(),
        "readelf {args:?}: {}",
        described(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs scripts/dist.sh's artefacts: scripts/test.sh runs it"]
fn sha256sums_lists_every_artefact_and_each_matches() {
    let dir = dist();
    let sums = fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let listed: BTreeSet<String> = sums
        .lines()
        .map(|l| {
            let (hash, name) = l.split_once("  ").expect("HASH  NAME, as sha256sum writes");
            assert!(
                hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
                "{l}"
            );
            name.to_string()
        })
        .collect();
    let expected: BTreeSet<String> = TARGETS
        .iter()
        .flat_map(|t| [t.tarball(), t.deb(), t.rpm()])
        .collect();
    assert_eq!(listed, expected, "SHA256SUMS");
    let on_disk: BTreeSet<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "SHA256SUMS")
        .collect();
    assert_eq!(on_disk, expected, "the files in {}", dir.display());
    let out = run(Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(&dir));
    assert!(
        out.status.success(),
        "sha256sum --check: {}",
        described(&out)
    );
}

#[test]
#[ignore = "needs scripts/dist.sh's artefacts: scripts/test.sh runs it"]
fn tarballs_hold_a_static_binary_and_what_it_needs_beside_it() {
    for target in &TARGETS {
        let listed = tar_listing(&dist().join(target.tarball()));
        let name = target.name();
        let mut expected: BTreeMap<String, String> = [
            (format!("{name}/"), "drwxr-xr-x"),
            (format!("{name}/systemd/"), "drwxr-xr-x"),
            (format!("{name}/lastcall"), "-rwxr-xr-x"),
            (format!("{name}/lastcall.toml"), "-rw-------"),
        ]
        .into_iter()
        .map(|(k, v)| (k, format!("{v} 0/0")))
        .collect();
        let sources = [
            ("lastcall.toml", "deploy/lastcall.default.toml".to_string()),
            (
                "lastcall.example.toml",
                "deploy/lastcall.example.toml".into(),
            ),
            ("README.md", "README.md".into()),
            ("LICENSE", "LICENSE".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(
            fs::read_dir(top("deploy/systemd"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .map(|unit| (format!("systemd/{unit}"), format!("deploy/systemd/{unit}"))),
        )
        .collect::<Vec<_>>();
        for (file, _) in &sources {
            expected
                .entry(format!("{name}/{file}"))
                .or_insert_with(|| "-rw-r--r-- 0/0".into());
        }
        assert_eq!(listed, expected, "{}", target.tarball());
        for (file, source) in &sources {
            assert!(
                fs::read(target.unpacked().join(file)).unwrap() == fs::read(top(source)).unwrap(),
                "{name}/{file} differs from {source}"
            );
        }

        // Static: no program interpreter, no shared library; stripped; of this architecture.
        let binary = target.binary();
        let header = readelf(&["--file-header"], &binary);
        assert!(
            header
                .lines()
                .any(|l| l.trim()
                    == format!("Machine:                           {}", target.machine)),
            "{}: {header}",
            target.triple
        );
        let programs = readelf(&["--program-headers", "--wide"], &binary);
        assert!(
            !programs.contains("INTERP"),
            "{}: {programs}",
            target.triple
        );
        let dynamic = readelf(&["--dynamic"], &binary);
        assert!(
            !dynamic.contains("(NEEDED)"),
            "{}: {dynamic}",
            target.triple
        );
        let sections = readelf(&["--section-headers", "--wide"], &binary);
        assert!(
            !sections.contains(".symtab") && !sections.contains(".debug_"),
            "{} is not stripped: {sections}",
            target.triple
        );
        let size = fs::metadata(&binary).unwrap().len();
        assert!(
            size <= MAX_SIZE,
            "{}: {size} bytes, more than {MAX_SIZE}",
            target.triple
        );
        println!("{}: {size} bytes, static", target.triple);

        target.assert_runs_and_accepts(&binary, &target.unpacked().join("lastcall.example.toml"));
        target.assert_runs_and_accepts(&binary, &target.unpacked().join("lastcall.toml"));
    }
}

/// A scale-in in queue mode with `target`'s binary on every instance: the victim runs its step
/// once and its action is completed CONTINUE; the other instance runs nothing.
async fn scale_in_with(target: &Target) {
    let aws = aws().await;
    let g = group(
        &aws,
        &format!("dist-{}", target.rpm_arch),
        GroupSpec {
            size: 2,
            ..Default::default()
        },
    )
    .await;
    let runner = target.runner();
    let mut nodes = Vec::new();
    for i in &g.instances {
        let mut n = Node::new(i, &g.queue_url, &config("", &marker("mark", "ran")))
            .await
            .program(runner.as_deref(), &target.binary());
        n.start();
        nodes.push(n);
    }
    set_desired(&aws, &g.name, 1).await;
    let victim = wait_victim(&aws, &g.instances, LONG).await;
    wait_terminated(&aws, &victim, LONG).await;
    let acts = actions(&victim).await;
    let completed: Vec<_> = acts.iter().filter(|a| a["state"] == "completed").collect();
    assert_eq!(
        completed.len(),
        1,
        "{}: one completed action: {acts:?}",
        target.triple
    );
    assert_eq!(completed[0]["result"], "CONTINUE");
    for n in &nodes {
        let ran = lines(&n.path("ran"));
        if n.instance == victim {
            assert_eq!(ran, [format!("{victim} 0")], "the victim ran its step once");
            n.wait_log("termination handled", LONG).await;
        } else {
            assert!(ran.is_empty(), "{} ran nothing: {}", n.instance, n.log());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/dist.sh's artefacts: scripts/test.sh runs it"]
async fn static_binary_finds_users_in_etc_passwd_and_says_so() {
    // musl has no NSS: `lastcall check` says where users come from, and a user it cannot find
    // fails with what to do instead.
    let aws = aws().await;
    let g = group(&aws, "dist-users", GroupSpec::default()).await;
    let steps = r#"
[[step]]
kind = "command"
name = "as-root"
user = "root"
command = ["/bin/true"]

[[step]]
kind = "command"
name = "as-ldap-user"
user = "no-such-user-here"
command = ["/bin/true"]
"#;
    let target = &TARGETS[0];
    let mut n = Node::new(&g.instances[0], &g.queue_url, &config("", steps))
        .await
        .program(None, &target.binary());
    let (code, stdout) = n.stdout_of(&["check"]);
    assert_ne!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains(r#"runs as user "root" (uid 0, gid 0), found in /etc/passwd"#),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            r#"user "no-such-user-here" is not in /etc/passwd: this static build of lastcall reads users from /etc/passwd"#
        ),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/dist.sh's artefacts: scripts/test.sh runs it"]
async fn x86_64_static_binary_scales_in_end_to_end() {
    scale_in_with(&TARGETS[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/dist.sh's artefacts: scripts/test.sh runs it"]
async fn aarch64_binary_scales_in_end_to_end_under_qemu() {
    scale_in_with(&TARGETS[1]).await;
}

// ---- release packages

/// The files both packages install (paths under the root), with their modes and their sources in
/// the repository. The binary is the tarball's.
const PACKAGED: [(&str, u32, &str); 9] = [
    ("usr/bin/lastcall", 0o755, "(the tarball's binary)"),
    (
        "usr/lib/systemd/system/lastcall.service",
        0o644,
        "deploy/systemd/lastcall.service",
    ),
    (
        "usr/lib/systemd/system/lastcall-once.service",
        0o644,
        "deploy/systemd/lastcall-once.service",
    ),
    (
        "usr/lib/systemd/system/lastcall-once.timer",
        0o644,
        "deploy/systemd/lastcall-once.timer",
    ),
    (
        "usr/lib/systemd/system/lastcall-sweep.service",
        0o644,
        "deploy/systemd/lastcall-sweep.service",
    ),
    (
        "usr/lib/systemd/system/lastcall-sweep.timer",
        0o644,
        "deploy/systemd/lastcall-sweep.timer",
    ),
    (CONFFILE, 0o600, "deploy/lastcall.default.toml"),
    (
        "usr/share/doc/lastcall/lastcall.example.toml",
        0o644,
        "deploy/lastcall.example.toml",
    ),
    ("usr/share/doc/lastcall/README.md", 0o644, "README.md"),
];
const BINARY: &str = "usr/bin/lastcall";
const CONFFILE: &str = "etc/lastcall/lastcall.toml";
const STATE_DIR: &str = "var/lib/lastcall";

/// The .rpm's scriptlets: rpm's query tag, and the file Cargo.toml takes it from.
const RPM_SCRIPTLETS: [(&str, &str); 3] = [
    ("POSTIN", "deploy/rpm/post_install.sh"),
    ("PREUN", "deploy/rpm/pre_uninstall.sh"),
    ("POSTUN", "deploy/rpm/post_uninstall.sh"),
];

/// The directories that hold `paths`, as dpkg and `install -d` make them: "dir 0755".
fn with_parents(paths: BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = paths.clone();
    for path in paths.keys() {
        for parent in Path::new(path).ancestors().skip(1) {
            if !parent.as_os_str().is_empty() {
                out.entry(parent.to_string_lossy().into_owned())
                    .or_insert_with(|| "dir 0755".into());
            }
        }
    }
    out
}

/// dpkg on the scratch root `root`, maintainer scripts run outside it with $DPKG_ROOT set.
fn dpkg(root: &Path) -> Command {
    let mut cmd = Command::new(system_tool("dpkg"));
    cmd.arg(format!("--root={}", root.display()))
        .args([
            "--force-not-root",
            "--force-script-chrootless",
            "--log=/dev/null",
        ])
        // dpkg wants ldconfig and start-stop-daemon in PATH, even as a user without sbin in it.
        .env(
            "PATH",
            format!(
                "{}:/usr/local/sbin:/usr/sbin:/sbin",
                std::env::var("PATH").unwrap_or_default()
            ),
        );
    cmd
}

/// An empty dpkg database under `root` that takes packages of `arch` (a foreign architecture is
/// added as multiarch does): dpkg checks the .deb's Depends, and with nothing installed any
/// dependency fails the install. A static binary needs none.
fn scratch_dpkg_root(root: &Path, arch: &str) {
    let db = root.join("var/lib/dpkg");
    for dir in ["info", "updates"] {
        fs::create_dir_all(db.join(dir)).unwrap();
    }
    for dir in [root, &root.join("var"), &root.join("var/lib")] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::write(db.join("status"), "").unwrap();
    let out = run(Command::new(system_tool("dpkg")).arg("--print-architecture"));
    if String::from_utf8_lossy(&out.stdout).trim() != arch {
        let out = run(dpkg(root).args(["--add-architecture", arch]));
        assert!(
            out.status.success(),
            "dpkg --add-architecture: {}",
            described(&out)
        );
    }
}

/// What is installed under `root`, without dpkg's database.
fn installed(root: &Path) -> BTreeMap<String, String> {
    let mut files = tree(root);
    files.retain(|path, _| !path.starts_with("var/lib/dpkg"));
    files
}

#[test]
#[ignore = "needs scripts/dist.sh's artefacts: scripts/test.sh runs it"]
fn debs_install_into_a_scratch_root() {
    for target in &TARGETS {
        deb_installs_into_a_scratch_root(target);
    }
}

fn deb_installs_into_a_scratch_root(target: &Target) {
    let deb = &dist().join(target.deb());
    let field = |name: &str| {
        let out = run(Command::new(system_tool("dpkg-deb"))
            .arg("--field")
            .arg(deb)
            .arg(name));
        assert!(
            out.status.success(),
            "dpkg-deb --field: {}",
            described(&out)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .trim_end()
            .to_string()
    };
    assert_eq!(field("Package"), "lastcall");
    assert_eq!(field("Architecture"), target.deb_arch);
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    assert_eq!(field("Section"), "admin");
    assert_eq!(field("Maintainer"), "lastcall project <lastcall@invalid>");
    // Static: not even the C library.
    for none in ["Depends", "Pre-Depends", "Recommends"] {
        assert_eq!(field(none), "", "{none}");
    }
    let description = field("Description");
    assert!(
        description.lines().count() > 3 && description.contains("lifecycle action"),
        "a description with an extended part: {description}"
    );

    // Into an empty root, as on a fresh host.
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("root");
    scratch_dpkg_root(&root, target.deb_arch);
    let out = run(dpkg(&root).arg("--install").arg(deb));
    assert!(out.status.success(), "dpkg --install: {}", described(&out));

    let files: BTreeMap<String, String> = PACKAGED
        .iter()
        .map(|(path, mode, _)| (path.to_string(), format!("file {mode:04o}")))
        .chain([
            (
                "usr/share/doc/lastcall/copyright".into(),
                "file 0644".into(),
            ),
            (STATE_DIR.into(), "dir 0700".into()),
        ])
        .collect();
    let expected = with_parents(files);
    let after_install = installed(&root);
    // Installed, not enabled: no *.wants link anywhere, nothing under /etc/systemd.
    assert!(
        !after_install
            .keys()
            .any(|p| p.starts_with("etc/systemd") || p.contains(".wants")),
        "the .deb enabled a unit: {after_install:#?}"
    );
    assert_eq!(after_install, expected, "what the .deb installed");
    for (path, _, source) in PACKAGED.iter().filter(|(path, _, _)| *path != BINARY) {
        assert!(
            fs::read(root.join(path)).unwrap() == fs::read(top(source)).unwrap(),
            "/{path} differs from {source}"
        );
    }
    let binary = root.join(BINARY);
    assert_eq!(
        sha256(&binary),
        sha256(&target.binary()),
        "/{BINARY} is the tarball's binary"
    );
    let config = root.join(CONFFILE);
    target.assert_runs_and_accepts(&binary, &config);

    // dpkg knows the config as a conffile, with the packaged content's hash.
    let out = run(dpkg(&root).args(["--status", "lastcall"]));
    assert!(out.status.success(), "dpkg --status: {}", described(&out));
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("\nStatus: install ok installed\n"),
        "{status}"
    );
    let conffiles: Vec<&str> = status
        .lines()
        .skip_while(|l| *l != "Conffiles:")
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .map(str::trim)
        .collect();
    let out = run(Command::new(system_tool("md5sum")).arg(top("deploy/lastcall.default.toml")));
    let md5 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(conffiles, [format!("/{CONFFILE} {md5}")], "{status}");

    // A changed config survives a reinstall (dpkg keeps a changed conffile), with its mode.
    let changed = format!(
        "{}# changed on this host\n",
        fs::read_to_string(&config).unwrap()
    );
    fs::write(&config, &changed).unwrap();
    let out = run(dpkg(&root).arg("--install").arg(deb));
    assert!(
        out.status.success(),
        "dpkg --install again: {}",
        described(&out)
    );
    assert_eq!(fs::read_to_string(&config).unwrap(), changed);
    assert_eq!(installed(&root), expected, "after the reinstall");

    // Enabled by the administrator, as `systemctl enable` does, beside another unit's link.
    let etc_units = root.join("etc/systemd/system");
    let links = [
        (
            "multi-user.target.wants/lastcall.service",
            "/usr/lib/systemd/system/lastcall.service",
        ),
        (
            "timers.target.wants/lastcall-once.timer",
            "/usr/lib/systemd/system/lastcall-once.timer",
        ),
        (
            "multi-user.target.wants/other.service",
            "/usr/lib/systemd/system/other.service",
        ),
    ];
    for (link, target) in links {
        fs::create_dir_all(etc_units.join(link).parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, etc_units.join(link)).unwrap();
    }
    let links: BTreeMap<String, String> = links
        .iter()
        .map(|(link, target)| {
            (
                format!("etc/systemd/system/{link}"),
                format!("link {target}"),
            )
        })
        .collect();

    // Removed: the config, the state and the links stay.
    let out = run(dpkg(&root).args(["--remove", "lastcall"]));
    assert!(out.status.success(), "dpkg --remove: {}", described(&out));
    let mut kept = links.clone();
    kept.insert(CONFFILE.into(), "file 0600".into());
    kept.insert(STATE_DIR.into(), "dir 0700".into());
    assert_eq!(installed(&root), with_parents(kept), "after dpkg --remove");
    assert_eq!(fs::read_to_string(&config).unwrap(), changed);

    // Purged: only the other unit's link is left (and the directories dpkg did not make).
    let out = run(dpkg(&root).args(["--purge", "lastcall"]));
    assert!(out.status.success(), "dpkg --purge: {}", described(&out));
    let mut left = with_parents(
        links
            .into_iter()
            .filter(|(link, _)| link.ends_with("other.service"))
            .collect(),
    );
    left.insert(
        "etc/systemd/system/timers.target.wants".into(),
        "dir 0755".into(),
    );
    left.insert("var".into(), "dir 0755".into());
    left.insert("var/lib".into(), "dir 0755".into());
    assert_eq!(installed(&root), left, "after dpkg --purge");
}

#[test]
#[ignore = "needs scripts/dist.sh's artefacts: scripts/test.sh runs it"]
fn rpms_hold_the_same_files() {
    for target in &TARGETS {
        rpm_holds_the_same_files(target);
    }
}

fn rpm_holds_the_same_files(target: &Target) {
    let package = dist().join(target.rpm());
    let rpm = system_tool("rpm");
    let query = |format: &str| {
        let out = run(Command::new(&rpm)
            .args(["--query", "--package", "--queryformat", format])
            .arg(&package));
        assert!(out.status.success(), "rpm --query: {}", described(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        query("%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{LICENSE}"),
        format!(
            "lastcall {} 1 {} Apache-2.0",
            env!("CARGO_PKG_VERSION"),
            target.rpm_arch
        )
    );

    // Paths, modes, owners and flags: c = config, n = noreplace, d = documentation.
    let files: BTreeMap<String, String> = query(
        "[%{FILENAMES} %{FILEMODES:octal} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEFLAGS:fflags}\n]",
    )
    .lines()
    .map(|l| {
        let (path, rest) = l.split_once(' ').unwrap();
        (path.to_string(), rest.trim_end().to_string())
    })
    .collect();
    let expected: BTreeMap<String, String> = PACKAGED
        .iter()
        .map(|(path, mode, _)| {
            let flags = if *path == CONFFILE {
                " cn"
            } else if path.starts_with("usr/share/doc/") {
                " d"
            } else {
                ""
            };
            (
                format!("/{path}"),
                format!("{:o} root:root{flags}", 0o100000 | mode),
            )
        })
        .collect();
    assert_eq!(files, expected, "the .rpm's files");

    // Requires: /bin/sh for the scriptlets, and rpm's own features; no library (static).
    let requires = query("[%{REQUIRENAME}\n]");
    for require in requires.lines() {
        assert!(
            ["rpmlib(", "config(lastcall)"]
                .iter()
                .any(|p| require.starts_with(p))
                || require == "/bin/sh",
            "the .rpm requires {require}:\n{requires}"
        );
    }

    // The scriptlets: the files in deploy/rpm/, run by /bin/sh; %post makes the state directory.
    for (tag, file) in RPM_SCRIPTLETS {
        assert_eq!(query(&format!("%{{{tag}PROG}}")), "/bin/sh", "{tag}");
        assert_eq!(
            query(&format!("%{{{tag}}}")).trim_end(),
            read(file).trim_end(),
            "{tag}"
        );
    }
    for tag in ["PREIN", "PRETRANS", "POSTTRANS"] {
        assert_eq!(
            query(&format!("%{{{tag}}}")),
            "(none)",
            "no {tag} scriptlet"
        );
    }
    let post = read("deploy/rpm/post_install.sh");
    assert!(
        post.contains(&format!("mkdir -m 0700 /{STATE_DIR}\n")),
        "{post}"
    );

    // The payload, checked against its digest, and as rpm2archive turns it into a tar. (Debian's
    // rpm2cpio writes it out but exits 1: the header records no archive size to compare with.)
    let out = run(Command::new(&rpm).arg("--checksig").arg(&package));
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("digests OK"),
        "rpm --checksig: {}",
        described(&out)
    );
    let scratch = tempfile::tempdir().unwrap();
    let archive = scratch.path().join("payload.tar.gz");
    let out = run(Command::new(system_tool("rpm2archive"))
        .arg("-")
        .stdin(fs::File::open(&package).unwrap())
        .stdout(fs::File::create(&archive).unwrap()));
    assert!(out.status.success(), "rpm2archive: {}", described(&out));
    let payload = tar_listing(&archive);
    let mode_string = |mode: u32| -> String {
        let mut out = String::from("-");
        for shift in [6, 3, 0] {
            for (bit, c) in [(4, 'r'), (2, 'w'), (1, 'x')] {
                out.push(if mode >> shift & bit != 0 { c } else { '-' });
            }
        }
        out
    };
    let expected: BTreeMap<String, String> = PACKAGED
        .iter()
        .map(|(path, mode, _)| (path.to_string(), format!("{} 0/0", mode_string(*mode))))
        .collect();
    assert_eq!(payload, expected, "the .rpm's payload");
    let root = scratch.path().join("root");
    fs::create_dir(&root).unwrap();
    let out = run(Command::new("tar")
        .args(["--extract", "--same-permissions", "--directory"])
        .arg(&root)
        .arg("--file")
        .arg(&archive));
    assert!(out.status.success(), "tar --extract: {}", described(&out));
    for (path, _, source) in PACKAGED.iter().filter(|(path, _, _)| *path != BINARY) {
        assert!(
            fs::read(root.join(path)).unwrap() == fs::read(top(source)).unwrap(),
            "/{path} differs from {source}"
        );
    }
    let from_deb = scratch.path().join("deb");
    let out = run(Command::new(system_tool("dpkg-deb"))
        .arg("--extract")
        .arg(dist().join(target.deb()))
        .arg(&from_deb));
    assert!(
        out.status.success(),
        "dpkg-deb --extract: {}",
        described(&out)
    );
    let binary = root.join(BINARY);
    assert_eq!(
        sha256(&binary),
        sha256(&from_deb.join(BINARY)),
        "the same binary as the .deb's"
    );
    target.assert_runs_and_accepts(&binary, &root.join(CONFFILE));
}
