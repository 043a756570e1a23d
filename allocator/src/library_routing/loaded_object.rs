//! The shared objects loaded in this process, read through the dynamic
//! linker's own list (`dl_iterate_phdr`): their names, where they are mapped,
//! and the relocated words (GOT entries and data pointers) through which
//! their code reaches a named function.
//!
//! Only what glibc has already relocated is read: the dynamic section's
//! tables (symbols, strings, relocations) and the words the relocations
//! name. Nothing here writes; `got_patch` does.

use core::ffi::{c_int, c_void, CStr};

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_GNU_RELRO: u32 = 0x6474_e552;

const DT_NULL: i64 = 0;
const DT_PLTRELSZ: i64 = 2;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;
const DT_RELA: i64 = 7;
const DT_RELASZ: i64 = 8;
const DT_RPATH: i64 = 15;
const DT_JMPREL: i64 = 23;
const DT_RUNPATH: i64 = 29;

const R_X86_64_64: u32 = 1;
const R_X86_64_GLOB_DAT: u32 = 6;
const R_X86_64_JUMP_SLOT: u32 = 7;

#[repr(C)]
struct Elf64Dyn {
    tag: i64,
    value: u64,
}

#[repr(C)]
struct Elf64Rela {
    offset: u64,
    info: u64,
    addend: i64,
}

#[repr(C)]
struct Elf64Sym {
    name: u32,
    info: u8,
    other: u8,
    shndx: u16,
    value: u64,
    size: u64,
}

/// One loaded object as the dynamic linker describes it.
#[derive(Clone, Copy)]
pub struct LoadedObject<'a> {
    /// The load bias (`l_addr`).
    pub base: usize,
    /// The path it was loaded by (empty for the executable and the vDSO).
    pub path: &'a [u8],
    /// The lowest and highest address of its `PT_LOAD` segments.
    pub start: usize,
    pub end: usize,
    /// Its RELRO range (read-only after relocation), page-exact as the
    /// dynamic linker protects it: empty when it has none.
    pub relro_start: usize,
    pub relro_end: usize,
    /// Its writable `PT_LOAD` segments (the data and the GOT).
    writable: [(usize, usize); MAX_WRITABLE_SEGMENTS],
    dynamic: usize,
}

const MAX_WRITABLE_SEGMENTS: usize = 4;
const PF_W: u32 = 2;

/// How a word reaches its function.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SlotKind {
    /// A PLT call's GOT entry (`JUMP_SLOT`), lazy or bound at load.
    PltCall,
    /// A GOT entry for the function's address (`GLOB_DAT`): taken as a
    /// pointer, or called through the GOT (`-fno-plt`).
    AddressInGot,
    /// A data word initialised to the function's address (`R_X86_64_64`),
    /// e.g. `static void *(*alloc)(size_t) = malloc;`.
    DataPointer,
}

impl<'a> LoadedObject<'a> {
    /// The file name without its directory.
    pub fn file_name(&self) -> &'a [u8] {
        match self.path.iter().rposition(|&b| b == b'/') {
            Some(slash) => self.path.get(slash + 1..).unwrap_or(&[]),
            None => self.path,
        }
    }

    pub fn contains(&self, address: usize) -> bool {
        (self.start..self.end).contains(&address)
    }

    /// Whether the word at `address` lies in a segment mapped writable.
    pub fn is_writable_after_load(&self, address: usize) -> bool {
        let word = core::mem::size_of::<usize>();
        self.writable
            .iter()
            .any(|&(from, to)| from <= address && address + word <= to)
    }

    /// Whether the object has a `DT_RPATH`: glibc searches it for every
    /// `dlopen` made by the object or by anything it loaded (its loader
    /// chain), so such a `dlopen` depends on who calls.
    pub fn has_rpath(&self) -> bool {
        let mut found = false;
        self.for_each_dynamic(|tag, _| found |= tag == DT_RPATH);
        found
    }

    /// Whether the object has a `DT_RUNPATH`, searched for its own
    /// `dlopen` calls.
    pub fn has_runpath(&self) -> bool {
        let mut found = false;
        self.for_each_dynamic(|tag, _| found |= tag == DT_RUNPATH);
        found
    }

    fn for_each_dynamic(&self, mut each: impl FnMut(i64, u64)) {
        if self.dynamic == 0 {
            return;
        }
        let mut entry = self.dynamic as *const Elf64Dyn;
        loop {
            // SAFETY: `dynamic` is the object's PT_DYNAMIC, an array of
            // entries the dynamic linker keeps mapped while the object is
            // loaded; it ends with DT_NULL.
            let (tag, value) = unsafe { ((*entry).tag, (*entry).value) };
            if tag == DT_NULL {
                return;
            }
            each(tag, value);
            // SAFETY: not past DT_NULL, so the next entry exists.
            entry = unsafe { entry.add(1) };
        }
    }

    /// A table address from the dynamic section. glibc relocates these in
    /// place in writable dynamic sections; the vDSO's and a read-only one's
    /// stay file-relative.
    fn table_address(&self, value: u64) -> usize {
        let value = value as usize;
        if value < self.base {
            value + self.base
        } else {
            value
        }
    }

    /// Calls `each(symbol name, word address, kind)` for every relocated
    /// word that holds a function's address by symbol name: PLT and GOT
    /// entries and plain data pointers without an addend.
    pub fn for_each_function_word(&self, mut each: impl FnMut(&[u8], usize, SlotKind)) {
        let (mut strtab, mut symtab) = (0, 0);
        let (mut rela, mut rela_size, mut jmprel, mut jmprel_size) = (0, 0, 0, 0);
        self.for_each_dynamic(|tag, value| match tag {
            DT_STRTAB => strtab = self.table_address(value),
            DT_SYMTAB => symtab = self.table_address(value),
            DT_RELA => rela = self.table_address(value),
            DT_RELASZ => rela_size = value as usize,
            DT_JMPREL => jmprel = self.table_address(value),
            DT_PLTRELSZ => jmprel_size = value as usize,
            _ => {}
        });
        if strtab == 0 || symtab == 0 {
            return;
        }
        for (table, size) in [(rela, rela_size), (jmprel, jmprel_size)] {
            if table == 0 {
                continue;
            }
            let count = size / core::mem::size_of::<Elf64Rela>();
            for i in 0..count {
                // SAFETY: the relocation table lies in the object's mapped
                // image; DT_RELASZ / DT_PLTRELSZ bound it (x86-64 uses RELA
                // for both).
                let r = unsafe { &*(table as *const Elf64Rela).add(i) };
                let kind = match (r.info & 0xffff_ffff) as u32 {
                    R_X86_64_JUMP_SLOT => SlotKind::PltCall,
                    R_X86_64_GLOB_DAT => SlotKind::AddressInGot,
                    R_X86_64_64 if r.addend == 0 => SlotKind::DataPointer,
                    _ => continue,
                };
                let symbol = (r.info >> 32) as usize;
                if symbol == 0 {
                    continue;
                }
                // SAFETY: a relocation's symbol index names an entry of the
                // object's dynamic symbol table.
                let sym = unsafe { &*(symtab as *const Elf64Sym).add(symbol) };
                // SAFETY: st_name is an offset into the NUL-terminated
                // strings of the object's dynamic string table.
                let name = unsafe { CStr::from_ptr((strtab + sym.name as usize) as *const _) };
                each(name.to_bytes(), self.base + r.offset as usize, kind);
            }
        }
    }
}

/// Calls `each` for every object loaded now, in the dynamic linker's order
/// (the executable first). Returns the linker's count of objects ever added
/// and removed (`dlpi_adds`, `dlpi_subs`), which change with every load and
/// unload.
pub fn for_each_loaded(mut each: impl FnMut(&LoadedObject<'_>)) -> (u64, u64) {
    struct Walk<'a> {
        each: &'a mut dyn FnMut(&LoadedObject<'_>),
        counts: (u64, u64),
    }
    extern "C" fn visit(info: *mut libc::dl_phdr_info, size: usize, data: *mut c_void) -> c_int {
        // SAFETY: `data` is the Walk passed below, alive for the call.
        let walk = unsafe { &mut *(data as *mut Walk<'_>) };
        // SAFETY: glibc passes a valid info of `size` bytes for the call.
        let info = unsafe { &*info };
        if size >= core::mem::size_of::<libc::dl_phdr_info>() {
            walk.counts = (info.dlpi_adds, info.dlpi_subs);
        }
        let path = if info.dlpi_name.is_null() {
            &[][..]
        } else {
            // SAFETY: dlpi_name is the object's NUL-terminated name, kept
            // by the dynamic linker at least for this call (the borrow does
            // not outlive it).
            unsafe { CStr::from_ptr(info.dlpi_name) }.to_bytes()
        };
        let base = info.dlpi_addr as usize;
        let mut object = LoadedObject {
            base,
            path,
            start: usize::MAX,
            end: 0,
            relro_start: 0,
            relro_end: 0,
            writable: [(0, 0); MAX_WRITABLE_SEGMENTS],
            dynamic: 0,
        };
        let mut writable_count = 0;
        for i in 0..info.dlpi_phnum as usize {
            // SAFETY: dlpi_phdr points at dlpi_phnum program headers.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            let from = base + ph.p_vaddr as usize;
            match ph.p_type {
                PT_LOAD => {
                    object.start = object.start.min(from);
                    object.end = object.end.max(from + ph.p_memsz as usize);
                    if ph.p_flags & PF_W != 0 {
                        if let Some(free) = object.writable.get_mut(writable_count) {
                            *free = (from, from + ph.p_memsz as usize);
                            writable_count += 1;
                        }
                    }
                }
                PT_DYNAMIC => object.dynamic = from,
                PT_GNU_RELRO => {
                    // The dynamic linker protects whole pages, rounding the
                    // end down: the last partial page stays writable.
                    let page = crate::os::PAGE_SIZE;
                    object.relro_start = from & !(page - 1);
                    object.relro_end = (from + ph.p_memsz as usize) & !(page - 1);
                }
                _ => {}
            }
        }
        if object.start < object.end {
            (walk.each)(&object);
        }
        0
    }
    let mut walk = Walk {
        each: &mut each,
        counts: (0, 0),
    };
    // SAFETY: `visit` matches the callback type and only uses `walk`,
    // which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&mut walk as *mut Walk<'_>).cast()) };
    walk.counts
}
