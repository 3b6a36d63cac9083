//! Issue 7 §4: bad host input, all in one test. Every CLI path that takes input — sizes,
//! timeouts, flags, subcommands, paths, trace files, `--kernel` with a truncated, corrupt,
//! wrong-arch, huge or mis-laid-out ELF (segments over the boot structures or the page
//! tables' and stacks' addresses, outside RAM, in the MMIO hole, in the mmap window, W+X, a
//! BSS too big to zero) — exits 2 with exactly one line on stderr starting `memvisor: `,
//! never panics, prints nothing on stdout and leaves no output file behind (`--cases-out`,
//! `bench --update-md`). `tests/cli.rs` holds the first such cases; these extend them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// One bad invocation.
struct Case {
    args: Vec<String>,
    /// A piece of the expected error line.
    needle: &'static str,
    /// Reaches the VMM (opens /dev/kvm before it finds the problem).
    kvm: bool,
}

fn case(args: &[&str], needle: &'static str) -> Case {
    Case {
        args: args.iter().map(|s| s.to_string()).collect(),
        needle,
        kvm: false,
    }
}

fn vmm_case(args: &[&str], needle: &'static str) -> Case {
    Case {
        kvm: true,
        ..case(args, needle)
    }
}

/// A copy of the embedded guest ELF with its program headers editable.
#[derive(Clone)]
struct Elf(Vec<u8>);

const PT_LOAD: u32 = 1;

impl Elf {
    fn guest() -> Elf {
        Elf(memvisor::guest_image::GUEST_ELF.to_vec())
    }

    fn u16_at(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.0[off], self.0[off + 1]])
    }

    fn u64_at(&self, off: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[off..off + 8]);
        u64::from_le_bytes(b)
    }

    fn put_u16(&mut self, off: usize, v: u16) -> &mut Self {
        self.0[off..off + 2].copy_from_slice(&v.to_le_bytes());
        self
    }

    fn put_u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_le_bytes());
        self
    }

    fn put_u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_le_bytes());
        self
    }

    /// Offset of program header `i`.
    fn ph(&self, i: usize) -> usize {
        self.u64_at(0x20) as usize + i * usize::from(self.u16_at(0x36))
    }

    /// Index of the PT_LOAD segment with these p_flags (5 = R X, 4 = R, 6 = R W).
    fn seg(&self, flags: u32) -> usize {
        (0..usize::from(self.u16_at(0x38)))
            .find(|&i| {
                let o = self.ph(i);
                self.0[o..o + 4] == PT_LOAD.to_le_bytes()
                    && self.0[o + 4..o + 8] == flags.to_le_bytes()
            })
            .expect("segment with these flags")
    }

    fn field(&mut self, seg: usize, off: usize, v: u64) -> &mut Self {
        let o = self.ph(seg) + off;
        self.put_u64(o, v)
    }

    fn get(&self, seg: usize, off: usize) -> u64 {
        self.u64_at(self.ph(seg) + off)
    }
}

// Program header field offsets (ELF64).
const P_FLAGS: usize = 4;
const P_OFFSET: usize = 8;
const P_VADDR: usize = 16;
const P_PADDR: usize = 24;
const P_FILESZ: usize = 32;
const P_MEMSZ: usize = 40;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write test input");
    p.to_string_lossy().into_owned()
}

fn run(args: &[String], cwd: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .output()
        .expect("run memvisor")
}

/// Exit 2, one `memvisor: ` line on stderr mentioning `needle`, no panic, empty stdout.
fn refused(
    args: &[String],
    needle: &str,
    cwd: &Path,
    stdout_may_have_output: bool,
) -> Result<(), String> {
    let out = run(args, cwd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let why = if out.status.code() != Some(2) {
        format!("exit {:?}", out.status)
    } else if stderr.contains("panicked") {
        "panicked".to_string()
    } else if lines.len() != 1 {
        format!("{} lines on stderr", lines.len())
    } else if !lines[0].starts_with("memvisor: ") {
        "the line does not start with `memvisor: `".to_string()
    } else if !lines[0].to_lowercase().contains(&needle.to_lowercase()) {
        format!("the line lacks {needle:?}")
    } else if !stdout_may_have_output && !out.stdout.is_empty() {
        "wrote to stdout".to_string()
    } else {
        return Ok(());
    };
    Err(format!("{args:?}: {why}; stderr: {stderr:?}"))
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    v
}

#[test]
fn every_bad_input_exits_2_with_one_line_and_no_output_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let s = |x: &str| x.to_string();
    let mut cases: Vec<Case> = Vec::new();

    // ---- sizes, timeouts, flags, subcommands --------------------------------------------
    for (mem, needle) in [
        ("", "invalid size"),
        ("-1", "'-1'"),
        ("1.5G", "unknown suffix"),
        ("0x1000", "unknown suffix"),
        ("16777216T", "overflows"),
        ("1025G", "maximum"),
        ("2G+1", "unknown suffix"),
        ("4k", "too small"),
        ("5M", "too small"),
    ] {
        let c = if needle == "too small" {
            vmm_case
        } else {
            case
        };
        cases.push(c(&["--mem", mem], needle));
        cases.push(c(&["run", "--scenario", "hostile", "--mem", mem], needle));
    }
    for t in ["0", "-0", "nan", "inf", "1e999", "86401", "-86400"] {
        cases.push(case(&["--timeout", t], "--timeout"));
    }
    cases.push(case(&["--timeout", "abc"], "invalid value"));
    cases.push(case(&["--zones", "bogus"], "invalid value"));
    cases.push(case(&["--heap-debug", "bogus"], "invalid value"));
    cases.push(case(&["--scenario", ""], "unknown scenario"));
    cases.push(case(&["--scenario", "HOSTILE"], "unknown scenario"));
    cases.push(case(&["--json", "--json"], "--json"));
    cases.push(case(&["--quick=yes"], "--quick"));
    cases.push(case(&["frobnicate"], "frobnicate"));
    cases.push(case(&["run", "extra"], "extra"));
    cases.push(case(&["bench", "--bogus"], "--bogus"));
    cases.push(case(&["bench", "extra"], "extra"));
    cases.push(case(&["replay"], "required"));
    cases.push(case(&["--cases-out"], "--cases-out"));

    // ---- paths -----------------------------------------------------------------------
    cases.push(case(&["--kernel", ""], "--kernel"));
    cases.push(case(&["--kernel", &d.to_string_lossy()], "directory"));
    cases.push(vmm_case(&["--kernel", "/dev/null"], "ELF"));
    cases.push(vmm_case(&["--kernel", "/dev/zero"], "limit"));

    // ---- kernel ELFs --------------------------------------------------------------------
    let g = Elf::guest();
    let (text, rodata, data) = (g.seg(5), g.seg(4), g.seg(6));
    let mut elfs: Vec<(&str, Elf, &'static str, &str)> = Vec::new();
    let edit = |f: &dyn Fn(&mut Elf)| {
        let mut e = g.clone();
        f(&mut e);
        e
    };
    elfs.push(("header-only", Elf(g.0[..64].to_vec()), "ELF", "256M"));
    elfs.push((
        "half",
        Elf(g.0[..g.0.len() / 2].to_vec()),
        "outside the file",
        "256M",
    ));
    elfs.push((
        "bad-magic",
        edit(&|e| {
            e.0[1] = b'X';
        }),
        "ELF",
        "256M",
    ));
    elfs.push((
        "elf32",
        edit(&|e| {
            e.0[4] = 1;
        }),
        "ELF",
        "256M",
    ));
    elfs.push((
        "big-endian",
        edit(&|e| {
            e.0[5] = 2;
        }),
        "",
        "256M",
    ));
    elfs.push((
        "riscv",
        edit(&|e| {
            e.put_u16(18, 243);
        }),
        "not x86_64",
        "256M",
    ));
    elfs.push((
        "dyn",
        edit(&|e| {
            e.put_u16(16, 3);
        }),
        "ET_EXEC",
        "256M",
    ));
    elfs.push((
        "no-load",
        edit(&|e| {
            for i in 0..usize::from(e.u16_at(0x38)) {
                let o = e.ph(i);
                e.put_u32(o, 4); // PT_NOTE
            }
        }),
        "no loadable segment",
        "256M",
    ));
    elfs.push((
        "phnum-huge",
        edit(&|e| {
            e.put_u16(0x38, 0xffff);
        }),
        "ELF",
        "256M",
    ));
    elfs.push((
        "phoff-past-end",
        edit(&|e| {
            let n = e.0.len() as u64;
            e.put_u64(0x20, n);
        }),
        "ELF",
        "256M",
    ));
    elfs.push((
        "filesz-gt-memsz",
        edit(&|e| {
            let m = e.get(data, P_MEMSZ);
            e.field(data, P_FILESZ, m + 1);
        }),
        "p_filesz exceeds p_memsz",
        "256M",
    ));
    elfs.push((
        "offset-past-end",
        edit(&|e| {
            e.field(data, P_OFFSET, 1 << 40);
        }),
        "outside the file",
        "256M",
    ));
    elfs.push((
        "vaddr-noncanonical",
        edit(&|e| {
            let v = e.get(data, P_VADDR);
            e.field(data, P_VADDR, (v & 0xfff) | 0x0000_8000_0000_0000);
        }),
        "canonical",
        "256M",
    ));
    elfs.push((
        "vaddr-wraps",
        edit(&|e| {
            e.field(data, P_MEMSZ, u64::MAX - 0x1000);
        }),
        "",
        "256M",
    ));
    elfs.push((
        "page-offsets-differ",
        edit(&|e| {
            let p = e.get(data, P_PADDR);
            e.field(data, P_PADDR, p + 8);
        }),
        "page offset",
        "256M",
    ));
    elfs.push((
        "overlap-phys",
        edit(&|e| {
            let p = e.get(text, P_PADDR);
            e.field(rodata, P_PADDR, p);
        }),
        "overlap",
        "256M",
    ));
    elfs.push((
        "entry-outside",
        edit(&|e| {
            let v = e.get(data, P_VADDR);
            e.put_u64(0x18, v);
        }),
        "entry point",
        "256M",
    ));
    elfs.push((
        "rwx",
        edit(&|e| {
            let o = e.ph(data) + P_FLAGS;
            e.put_u32(o, 7);
        }),
        "writable and executable",
        "256M",
    ));
    elfs.push((
        "bss-too-big",
        edit(&|e| {
            // A tiny file whose BSS would need gigabytes zeroed (used to abort the VMM).
            e.field(data, P_VADDR, 0x10_0000_0000)
                .field(data, P_PADDR, 4 << 30)
                .field(data, P_MEMSZ, 512 << 30);
        }),
        "1 GiB limit",
        "1T",
    ));
    // Segments over the boot structures or outside RAM (GPA).
    let v = |seg: usize, pa: u64| {
        let mut e = g.clone();
        let va = e.get(seg, P_VADDR);
        let old = e.get(seg, P_PADDR);
        e.field(seg, P_PADDR, pa + (old & 0xfff));
        let _ = va;
        e
    };
    elfs.push(("on-page-0", v(data, 0), "outside usable guest RAM", "256M"));
    elfs.push((
        "on-boot-info",
        v(data, 0x1000),
        "outside usable guest RAM",
        "256M",
    ));
    elfs.push((
        "past-ram",
        v(data, 256 << 20),
        "outside usable guest RAM",
        "256M",
    ));
    elfs.push((
        "straddles-ram-end",
        v(data, (256 << 20) - 0x2000),
        "outside usable guest RAM",
        "256M",
    ));
    elfs.push((
        "in-mmio-hole",
        v(data, 0xc000_0000),
        "outside usable guest RAM",
        "4G",
    ));
    elfs.push((
        "straddles-hole",
        v(data, 0xc000_0000 - 0x2000),
        "outside usable guest RAM",
        "4G",
    ));
    elfs.push((
        "fills-ram",
        edit(&|e| {
            // The image covers RAM from 2 MiB up: no room left for page tables and stacks.
            e.field(data, P_MEMSZ, (255 << 20) - e.get(data, P_PADDR));
        }),
        "too small",
        "256M",
    ));
    // Segments at the GVAs of the direct map, the stacks, the doorbell, the mmap window.
    let at = |va: u64| {
        let mut e = g.clone();
        let old = e.get(data, P_VADDR);
        e.field(data, P_VADDR, va + (old & 0xfff));
        e
    };
    elfs.push((
        "gva-direct-map",
        at(memvisor::layout::DIRECT_MAP_BASE + (2 << 20)),
        "already mapped",
        "256M",
    ));
    elfs.push((
        "gva-page-tables",
        at(memvisor::layout::DIRECT_MAP_BASE + (16 << 20)),
        "already mapped",
        "256M",
    ));
    elfs.push((
        "gva-boot-stack",
        at(memvisor::layout::BOOT_STACK_BOTTOM),
        "already mapped",
        "256M",
    ));
    elfs.push((
        "gva-user-stack",
        at(memvisor::layout::USER_STACK_BOTTOM),
        "already mapped",
        "256M",
    ));
    elfs.push((
        "gva-doorbell",
        at(memvisor_abi::DOORBELL_GVA),
        "already mapped",
        "256M",
    ));
    elfs.push((
        "gva-mmap-window",
        at(memvisor::layout::MMAP_WINDOW_START),
        "mmap window",
        "256M",
    ));
    let mut huge = g.0.clone();
    huge.resize((64 << 20) + 1, 0);
    elfs.push(("huge", Elf(huge), "limit", "256M"));
    for (name, elf, needle, mem) in &elfs {
        let p = write(d, &format!("{name}.elf"), &elf.0);
        cases.push(vmm_case(&["run", "--mem", mem, "--kernel", &p], needle));
    }

    // ---- trace files (replay) -----------------------------------------------------------
    let long = format!("a 0 {}\n", "9".repeat(1 << 20));
    for (name, bytes, needle) in [
        (
            "binary.trace",
            vec![0xffu8, 0xfe, 0, 1, 2, 3, b'\n'],
            "trace",
        ),
        (
            "huge-number.trace",
            b"a 0 99999999999999999999999\n".to_vec(),
            "trace",
        ),
        ("long-line.trace", long.into_bytes(), "trace"),
        ("negative.trace", b"a -1 16\n".to_vec(), "trace"),
    ] {
        let p = write(d, name, &bytes);
        cases.push(case(&["replay", &p], needle));
    }
    cases.push(case(&["replay", &d.to_string_lossy()], "directory"));
    let sample = write(d, "ok.trace", b"a 0 16\nf 0\n");
    cases.push(case(&["replay", &sample, "--mem", "63M"], "64 MiB"));
    cases.push(case(&["replay", &sample, "--mem", "lots"], "invalid size"));
    cases.push(case(&["replay", &sample, "--timeout", "0"], "--timeout"));
    cases.push(case(&["replay", &sample, "--heap", ""], "unknown heap"));

    // ---- output files are never left half written ---------------------------------------
    let tsv = d.join("cases.tsv");
    let tsv_s = tsv.to_string_lossy().into_owned();
    cases.push(case(
        &[
            "run",
            "--scenario",
            "fault-matrix",
            "--cases-out",
            &tsv_s,
            "--mem",
            "0",
        ],
        "greater than 0",
    ));
    cases.push(case(
        &[
            "run",
            "--scenario",
            "fault-matrix",
            "--cases-out",
            &tsv_s,
            "--timeout",
            "nan",
        ],
        "--timeout",
    ));
    let bad_kernel = d.join("header-only.elf").to_string_lossy().into_owned();
    cases.push(vmm_case(
        &[
            "run",
            "--scenario",
            "fault-matrix",
            "--cases-out",
            &tsv_s,
            "--kernel",
            &bad_kernel,
        ],
        "ELF",
    ));

    let kvm =
        common::kvm_or_skip("every_bad_input_exits_2_with_one_line_and_no_output_file (KVM cases)");
    let before = files_in(d);
    let mut ran = 0;
    let mut failures = Vec::new();
    for c in &cases {
        if c.kvm && !kvm {
            continue;
        }
        if let Err(e) = refused(&c.args, c.needle, d, false) {
            failures.push(e);
        }
        ran += 1;
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} bad invocations misbehaved:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(files_in(d), before, "a bad invocation left a file behind");
    assert!(!tsv.exists());

    // `bench --update-md` where BENCHMARKS.md cannot be replaced: the table is printed, the
    // error is one line, and no temporary file stays behind.
    if kvm {
        let cwd = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(cwd.path().join("BENCHMARKS.md")).expect("mkdir");
        let args = vec![s("bench"), s("--quick"), s("--update-md")];
        if let Err(e) = refused(&args, "BENCHMARKS.md", cwd.path(), true) {
            panic!("{e}");
        }
        assert_eq!(files_in(cwd.path()), vec![cwd.path().join("BENCHMARKS.md")]);
        ran += 1;
    }
    eprintln!(
        "{ran} bad invocations refused ({} cases, KVM {kvm})",
        cases.len()
    );
}
