//! Nothing reachable from the exported `malloc` family may enter Rust's panic
//! or formatting machinery: a panic there would allocate (re-entering the
//! allocator) and unwind through C frames.
//!
//! The test disassembles the release `libarenalloc.so`, builds the static
//! call graph from the allocation entry points, and fails if any reachable
//! function calls into `core::panicking`, `core::fmt` or std's panic code.
//! It reads machine code, so it checks what the optimiser actually left, not
//! what the source suggests.

#[path = "support/native.rs"]
mod native;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use native::{capi_libs, require_tool};

const ENTRY_POINTS: &[&str] = &[
    "malloc",
    "free",
    "cfree",
    "free_sized",
    "free_aligned_sized",
    "calloc",
    "realloc",
    "reallocarray",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "valloc",
    "pvalloc",
    "malloc_usable_size",
    "malloc_trim",
    "mallopt",
    "mallinfo",
    "mallinfo2",
    "malloc_stats",
    "malloc_info",
    "malloc_new_arena",
    "malloc_set_arena",
    "malloc_get_arena",
    "malloc_default_arena",
    "malloc_arena_malloc",
    "malloc_arena_calloc",
    "malloc_arena_aligned_alloc",
    "malloc_arena_destroy",
    "malloc_arena_trim",
    "malloc_arena_stats",
    "malloc_arena_set_limit",
];

/// Functions the loader calls (from `.init_array` and `.fini_array`, not
/// through any symbol or `lea`), found by a part of their mangled name: the
/// start-up initialisation and the `ARENALLOC_STATS` exit summary.
const LOADER_ENTRY_POINTS: &[&str] = &[
    "7process12init_at_load",
    "12exit_summary22print_summary_if_asked",
];

/// Symbols (mangled, v0 or legacy) that belong to the panic or formatting
/// machinery.
fn is_forbidden(symbol: &str) -> bool {
    symbol.contains("panicking")
        || symbol.contains("panic_fmt")
        || symbol.contains("rust_begin_unwind")
        || symbol.contains("4core3fmt")
        || symbol.contains("4core3fmt5write")
        || symbol.contains("slice_index_fail")
}

/// Function → the functions it calls or jumps to, from `objdump -d`; and
/// function start address → the name objdump labels it with.
type Graph = HashMap<String, BTreeSet<String>>;

fn call_graph(disassembly: &str) -> (Graph, HashMap<u64, String>) {
    let mut graph: Graph = HashMap::new();
    let mut taken: Graph = HashMap::new();
    let mut labels = HashMap::new();
    let mut current: Option<String> = None;
    for line in disassembly.lines() {
        if let Some((addr, name)) = line
            .strip_suffix(">:")
            .and_then(|l| l.split_once(" <"))
            .map(|(addr, name)| (addr.to_owned(), name.to_owned()))
        {
            if let Ok(addr) = u64::from_str_radix(addr.trim(), 16) {
                labels.insert(addr, name.clone());
            }
            graph.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        let Some(func) = &current else { continue };
        let is_transfer = line.contains("\tcall") || line.contains("\tjmp");
        // A function whose address is taken (`lea <f>`, exactly its start)
        // may be called through it: the housekeeper's thread function and
        // the thread-exit destructor are reached so.
        let is_address = line.contains("\tlea");
        if let (true, Some(start)) = (is_transfer || is_address, line.find('<')) {
            let target = &line[start + 1..];
            let end = target.find(['>', '+', '@']).unwrap_or(target.len());
            let exact = target.as_bytes().get(end) == Some(&b'>');
            let target = &target[..end];
            if target != func && (is_transfer || exact) {
                let edges = if is_transfer { &mut graph } else { &mut taken };
                edges
                    .entry(func.clone())
                    .or_default()
                    .insert(target.to_owned());
            }
        }
    }
    // Keep address-taken edges only to functions (not data symbols).
    for (func, targets) in taken {
        let functions: Vec<String> = targets
            .into_iter()
            .filter(|t| graph.contains_key(t))
            .collect();
        graph.entry(func).or_default().extend(functions);
    }
    (graph, labels)
}

/// Exported symbol → address, from `nm -D`. Identical functions may share an
/// address (`free` and `cfree`), and objdump labels it with one name only.
fn exported(nm_output: &str) -> HashMap<String, u64> {
    nm_output
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let addr = u64::from_str_radix(f.next()?, 16).ok()?;
            let _kind = f.next()?;
            Some((f.next()?.to_owned(), addr))
        })
        .collect()
}

#[test]
fn malloc_family_cannot_reach_panic_or_formatting_code() {
    let objdump = require_tool("objdump");
    let so = &capi_libs().so;
    let out = Command::new(objdump)
        .args(["-d", "--no-show-raw-insn"])
        .arg(so)
        .output()
        .expect("run objdump");
    assert!(out.status.success(), "objdump failed on {}", so.display());
    let (graph, labels) = call_graph(&String::from_utf8_lossy(&out.stdout));
    let nm = Command::new(require_tool("nm"))
        .args(["-D", "--defined-only"])
        .arg(so)
        .output()
        .expect("run nm");
    let symbols = exported(&String::from_utf8_lossy(&nm.stdout));
    let mut stack: Vec<String> = Vec::new();
    for entry in ENTRY_POINTS {
        let addr = symbols
            .get(*entry)
            .unwrap_or_else(|| panic!("{entry} is not exported by {}", so.display()));
        let label = labels
            .get(addr)
            .unwrap_or_else(|| panic!("no function at {entry}'s address {addr:#x}"));
        stack.push(label.clone());
    }
    for part in LOADER_ENTRY_POINTS {
        let found: Vec<&String> = graph.keys().filter(|f| f.contains(part)).collect();
        assert!(
            !found.is_empty(),
            "no function named like {part} in {}",
            so.display()
        );
        stack.extend(found.into_iter().cloned());
    }

    let mut parent: HashMap<String, String> = HashMap::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut violations = Vec::new();
    while let Some(func) = stack.pop() {
        if !seen.insert(func.clone()) {
            continue;
        }
        for callee in graph.get(&func).into_iter().flatten() {
            if is_forbidden(callee) {
                let mut chain = vec![callee.clone(), func.clone()];
                let mut at = func.clone();
                while let Some(p) = parent.get(&at) {
                    chain.push(p.clone());
                    at = p.clone();
                }
                violations.push(chain.join(" <- "));
            } else if !seen.contains(callee) {
                parent.entry(callee.clone()).or_insert_with(|| func.clone());
                stack.push(callee.clone());
            }
        }
    }
    assert!(
        seen.len() > ENTRY_POINTS.len(),
        "the call graph looks empty: is {} stripped?",
        so.display()
    );
    assert!(
        violations.is_empty(),
        "{} call chain(s) from the malloc family reach panic/fmt code:\n{}",
        violations.len(),
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_a_panic_call() {
    // A made-up disassembly in objdump's format: the checker must find the
    // forbidden callee, or the real test above proves nothing.
    let text = "0000000000001000 <malloc>:\n    1000:\tcall   2000 <helper>\n\n\
                0000000000002000 <helper>:\n    2000:\tcall   3000 <_RNvNtCs1_4core9panicking9panic_fmt>\n";
    let (graph, labels) = call_graph(text);
    assert_eq!(labels[&0x1000], "malloc");
    assert!(graph["malloc"].contains("helper"));
    assert!(graph["helper"].iter().any(|c| is_forbidden(c)));
}
