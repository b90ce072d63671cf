//! Wire-compatibility check of `proto/csi.proto` against the upstream CSI
//! v1.12.0 specification.
//!
//! The upstream `csi.proto` is obtained as a Go module (`go mod download`),
//! both files are compiled with `protoc` into descriptor sets, and the
//! decoded descriptors are compared element by element: package, messages
//! (recursively), fields, oneofs, enums, enum values, services, methods,
//! extensions and all options (including the CSI custom options such as
//! `csi_secret` and `alpha_*`). Every difference is collected and reported.
//!
//! Requirements: `go` (with access to the Go module proxy or a warm module
//! cache), `protoc` (Debian: protobuf-compiler) and the well-known type
//! protos (Debian: libprotobuf-dev, in /usr/include). Missing tools make the
//! test FAIL, never skip.
//!
//! Environment overrides: `GO` (go binary), `PROTOC` (protoc binary),
//! `PROTOC_INCLUDE` (directory holding google/protobuf/*.proto).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorProto,
    FileDescriptorSet, ServiceDescriptorProto,
};

const SPEC_MODULE: &str = "github.com/container-storage-interface/spec";
const SPEC_VERSION: &str = "v1.12.0";
const OUR_PROTO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proto/csi.proto");
const PROTO_FILE_NAME: &str = "csi.proto";

// ---------------------------------------------------------------------------
// Tool invocation
// ---------------------------------------------------------------------------

fn go_binary() -> String {
    if let Ok(go) = std::env::var("GO") {
        return go;
    }
    if which("go").is_some() {
        return "go".to_string();
    }
    ["/usr/local/go/bin/go", "/usr/lib/go/bin/go"]
        .into_iter()
        .find(|c| Path::new(c).is_file())
        .unwrap_or("go")
        .to_string()
}

fn protoc_binary() -> String {
    std::env::var("PROTOC").unwrap_or_else(|_| "protoc".to_string())
}

fn protoc_include() -> PathBuf {
    let dir =
        PathBuf::from(std::env::var("PROTOC_INCLUDE").unwrap_or_else(|_| "/usr/include".into()));
    let probe = dir.join("google/protobuf/descriptor.proto");
    assert!(
        probe.exists(),
        "csi_proto_compat: {} not found; install the well-known protobuf types \
         (Debian package libprotobuf-dev) or set PROTOC_INCLUDE",
        probe.display()
    );
    dir
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Downloads the upstream spec module with `go mod download` and returns the
/// path of its `csi.proto`.
fn fetch_spec_proto(work: &Path) -> PathBuf {
    std::fs::write(work.join("go.mod"), "module csiprotocompat\n").expect("write go.mod");
    let go = go_binary();
    let module = format!("{SPEC_MODULE}@{SPEC_VERSION}");
    let output = Command::new(&go)
        .args(["mod", "download", "-json", &module])
        .current_dir(work)
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "csi_proto_compat: cannot run `{go}` ({e}); the Go toolchain is required \
                 to fetch the upstream CSI spec {module}"
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let info: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "csi_proto_compat: `go mod download -json {module}` did not print JSON ({e}); \
             is the network / Go module proxy reachable?\nstatus: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            output.status
        )
    });
    if let Some(err) = info.get("Error").and_then(|v| v.as_str()) {
        panic!(
            "csi_proto_compat: `go mod download {module}` failed: {err}\n\
             (is the network / Go module proxy reachable?)\nstderr:\n{stderr}"
        );
    }
    assert!(
        output.status.success(),
        "csi_proto_compat: `go mod download {module}` exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert_eq!(
        info.get("Version").and_then(|v| v.as_str()),
        Some(SPEC_VERSION),
        "csi_proto_compat: go downloaded an unexpected version: {stdout}"
    );
    let dir = info
        .get("Dir")
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("csi_proto_compat: no \"Dir\" in go output: {stdout}"));
    let proto = Path::new(dir).join(PROTO_FILE_NAME);
    assert!(
        proto.is_file(),
        "csi_proto_compat: upstream module has no {}",
        proto.display()
    );
    proto
}

/// Compiles `proto` (with its imports) into serialized FileDescriptorSet bytes.
fn compile_descriptor_set(proto: &Path, out_dir: &Path, tag: &str) -> Vec<u8> {
    let include = protoc_include();
    let proto_dir = proto.parent().expect("proto has a parent directory");
    let out = out_dir.join(format!("{tag}.pb"));
    let protoc = protoc_binary();
    let mut descriptor_arg = std::ffi::OsString::from("--descriptor_set_out=");
    descriptor_arg.push(&out);
    let output = Command::new(&protoc)
        .arg("-I")
        .arg(proto_dir)
        .arg("-I")
        .arg(&include)
        .arg("--include_imports")
        .arg(descriptor_arg)
        .arg(proto)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "csi_proto_compat: cannot run `{protoc}` ({e}); install protoc \
                 (Debian package protobuf-compiler) or set PROTOC"
            )
        });
    assert!(
        output.status.success(),
        "csi_proto_compat: protoc failed on {} ({}):\n{}",
        proto.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read(&out).expect("read descriptor set written by protoc")
}

// ---------------------------------------------------------------------------
// Raw view of the descriptors, keeping option messages as bytes.
//
// prost_types drops unknown fields, so the custom CSI options (extensions of
// google.protobuf.*Options) are lost when decoding with it. This parallel,
// wire-compatible skeleton keeps every `options` sub-message as raw bytes so
// the options can be compared too.
// ---------------------------------------------------------------------------

mod raw {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileSet {
        #[prost(message, repeated, tag = "1")]
        pub file: Vec<File>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct File {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub package: Option<String>,
        #[prost(message, repeated, tag = "4")]
        pub message_type: Vec<Msg>,
        #[prost(message, repeated, tag = "5")]
        pub enum_type: Vec<Enum>,
        #[prost(message, repeated, tag = "6")]
        pub service: Vec<Service>,
        #[prost(message, repeated, tag = "7")]
        pub extension: Vec<Field>,
        #[prost(bytes = "vec", optional, tag = "8")]
        pub options: Option<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Msg {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(message, repeated, tag = "2")]
        pub field: Vec<Field>,
        #[prost(message, repeated, tag = "3")]
        pub nested_type: Vec<Msg>,
        #[prost(message, repeated, tag = "4")]
        pub enum_type: Vec<Enum>,
        #[prost(message, repeated, tag = "6")]
        pub extension: Vec<Field>,
        #[prost(bytes = "vec", optional, tag = "7")]
        pub options: Option<Vec<u8>>,
        #[prost(message, repeated, tag = "8")]
        pub oneof_decl: Vec<Oneof>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Field {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(bytes = "vec", optional, tag = "8")]
        pub options: Option<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Oneof {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(bytes = "vec", optional, tag = "2")]
        pub options: Option<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Enum {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(message, repeated, tag = "2")]
        pub value: Vec<EnumValue>,
        #[prost(bytes = "vec", optional, tag = "3")]
        pub options: Option<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EnumValue {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(bytes = "vec", optional, tag = "3")]
        pub options: Option<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Service {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(message, repeated, tag = "2")]
        pub method: Vec<Method>,
        #[prost(bytes = "vec", optional, tag = "3")]
        pub options: Option<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Method {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(bytes = "vec", optional, tag = "4")]
        pub options: Option<Vec<u8>>,
    }
}

/// Both decodings of one compiled descriptor set.
#[derive(Clone)]
struct Descriptors {
    set: FileDescriptorSet,
    raw: raw::FileSet,
}

impl Descriptors {
    fn decode(bytes: &[u8]) -> Self {
        Descriptors {
            set: FileDescriptorSet::decode(bytes).expect("decode FileDescriptorSet"),
            raw: raw::FileSet::decode(bytes).expect("decode raw FileDescriptorSet"),
        }
    }
}

// ---------------------------------------------------------------------------
// Flattening: every element becomes one key ("message .csi.v1.Foo", ...)
// mapped to its attributes. Both flatteners use the same key scheme so their
// results merge into one map.
// ---------------------------------------------------------------------------

type Attrs = BTreeMap<&'static str, String>;
type Flat = BTreeMap<String, Attrs>;

fn flatten(d: &Descriptors) -> Flat {
    let mut flat = Flat::new();
    flatten_structure(&d.set, &mut flat);
    flatten_options(&d.raw, &mut flat);
    flat
}

fn root_file(set: &FileDescriptorSet) -> Option<&FileDescriptorProto> {
    set.file.iter().find(|f| f.name() == PROTO_FILE_NAME)
}

fn flatten_structure(set: &FileDescriptorSet, flat: &mut Flat) {
    let imported: Vec<&str> = set
        .file
        .iter()
        .map(|f| f.name())
        .filter(|n| *n != PROTO_FILE_NAME)
        .collect();
    flat.entry("descriptor set".into())
        .or_default()
        .insert("imported files", format!("{imported:?}"));

    let Some(file) = root_file(set) else {
        flat.entry("descriptor set".into())
            .or_default()
            .insert("root file", format!("no {PROTO_FILE_NAME}"));
        return;
    };
    let attrs = flat.entry("file".into()).or_default();
    attrs.insert("package", file.package().to_string());
    attrs.insert("syntax", file.syntax().to_string());
    attrs.insert("dependencies", format!("{:?}", file.dependency));
    attrs.insert(
        "public dependencies",
        format!("{:?}", file.public_dependency),
    );
    attrs.insert("weak dependencies", format!("{:?}", file.weak_dependency));

    let scope = format!(".{}", file.package());
    for m in &file.message_type {
        flatten_message(&scope, m, flat);
    }
    for e in &file.enum_type {
        flatten_enum(&scope, e, flat);
    }
    for s in &file.service {
        flatten_service(&scope, s, flat);
    }
    for x in &file.extension {
        flatten_extension(&scope, x, flat);
    }
}

fn flatten_message(scope: &str, m: &DescriptorProto, flat: &mut Flat) {
    let name = format!("{scope}.{}", m.name());
    let attrs = flat.entry(format!("message {name}")).or_default();
    let oneofs: Vec<&str> = m.oneof_decl.iter().map(|o| o.name()).collect();
    attrs.insert("oneofs", format!("{oneofs:?}"));
    let ranges: Vec<(i32, i32)> = m
        .reserved_range
        .iter()
        .map(|r| (r.start(), r.end()))
        .collect();
    attrs.insert("reserved ranges", format!("{ranges:?}"));
    attrs.insert("reserved names", format!("{:?}", m.reserved_name));
    let ext_ranges: Vec<(i32, i32)> = m
        .extension_range
        .iter()
        .map(|r| (r.start(), r.end()))
        .collect();
    attrs.insert("extension ranges", format!("{ext_ranges:?}"));

    for o in &m.oneof_decl {
        flat.entry(format!("oneof {name}.{}", o.name()))
            .or_default();
    }
    for f in &m.field {
        let oneof = match f.oneof_index {
            Some(i) => m
                .oneof_decl
                .get(i as usize)
                .map(|o| o.name().to_string())
                .unwrap_or_else(|| format!("<bad oneof index {i}>")),
            None => "-".to_string(),
        };
        let attrs = flat
            .entry(format!("field {name}.{}", f.name()))
            .or_default();
        field_attrs(f, attrs);
        attrs.insert("oneof", oneof);
    }
    for n in &m.nested_type {
        flatten_message(&name, n, flat);
    }
    for e in &m.enum_type {
        flatten_enum(&name, e, flat);
    }
    for x in &m.extension {
        flatten_extension(&name, x, flat);
    }
}

fn field_attrs(f: &FieldDescriptorProto, attrs: &mut Attrs) {
    attrs.insert("number", f.number().to_string());
    attrs.insert("label", format!("{:?}", f.label()));
    attrs.insert("type", format!("{:?}", f.r#type()));
    attrs.insert("type_name", f.type_name().to_string());
    attrs.insert("proto3_optional", f.proto3_optional().to_string());
    attrs.insert("default_value", f.default_value().to_string());
    attrs.insert("json_name", f.json_name().to_string());
    attrs.insert("extendee", f.extendee().to_string());
}

fn flatten_extension(scope: &str, x: &FieldDescriptorProto, flat: &mut Flat) {
    let attrs = flat
        .entry(format!("extension {scope}.{}", x.name()))
        .or_default();
    field_attrs(x, attrs);
}

fn flatten_enum(scope: &str, e: &EnumDescriptorProto, flat: &mut Flat) {
    let name = format!("{scope}.{}", e.name());
    let attrs = flat.entry(format!("enum {name}")).or_default();
    let ranges: Vec<(i32, i32)> = e
        .reserved_range
        .iter()
        .map(|r| (r.start(), r.end()))
        .collect();
    attrs.insert("reserved ranges", format!("{ranges:?}"));
    attrs.insert("reserved names", format!("{:?}", e.reserved_name));
    for v in &e.value {
        flat.entry(format!("enum value {name}.{}", v.name()))
            .or_default()
            .insert("number", v.number().to_string());
    }
}

fn flatten_service(scope: &str, s: &ServiceDescriptorProto, flat: &mut Flat) {
    let name = format!("{scope}.{}", s.name());
    flat.entry(format!("service {name}")).or_default();
    for m in &s.method {
        let attrs = flat
            .entry(format!("method {name}.{}", m.name()))
            .or_default();
        attrs.insert("input_type", m.input_type().to_string());
        attrs.insert("output_type", m.output_type().to_string());
        attrs.insert("client_streaming", m.client_streaming().to_string());
        attrs.insert("server_streaming", m.server_streaming().to_string());
    }
}

fn flatten_options(set: &raw::FileSet, flat: &mut Flat) {
    let Some(file) = set
        .file
        .iter()
        .find(|f| f.name.as_deref() == Some(PROTO_FILE_NAME))
    else {
        return;
    };
    let scope = format!(".{}", file.package.as_deref().unwrap_or(""));
    put_options(flat, "file".into(), OptKind::File, &file.options);
    for m in &file.message_type {
        raw_message_options(&scope, m, flat);
    }
    for e in &file.enum_type {
        raw_enum_options(&scope, e, flat);
    }
    for s in &file.service {
        let name = format!("{scope}.{}", s.name.as_deref().unwrap_or(""));
        put_options(
            flat,
            format!("service {name}"),
            OptKind::Service,
            &s.options,
        );
        for m in &s.method {
            let key = format!("method {name}.{}", m.name.as_deref().unwrap_or(""));
            put_options(flat, key, OptKind::Method, &m.options);
        }
    }
    for x in &file.extension {
        let key = format!("extension {scope}.{}", x.name.as_deref().unwrap_or(""));
        put_options(flat, key, OptKind::Field, &x.options);
    }
}

fn raw_message_options(scope: &str, m: &raw::Msg, flat: &mut Flat) {
    let name = format!("{scope}.{}", m.name.as_deref().unwrap_or(""));
    put_options(
        flat,
        format!("message {name}"),
        OptKind::Message,
        &m.options,
    );
    for f in &m.field {
        let key = format!("field {name}.{}", f.name.as_deref().unwrap_or(""));
        put_options(flat, key, OptKind::Field, &f.options);
    }
    for o in &m.oneof_decl {
        let key = format!("oneof {name}.{}", o.name.as_deref().unwrap_or(""));
        put_options(flat, key, OptKind::Oneof, &o.options);
    }
    for x in &m.extension {
        let key = format!("extension {name}.{}", x.name.as_deref().unwrap_or(""));
        put_options(flat, key, OptKind::Field, &x.options);
    }
    for n in &m.nested_type {
        raw_message_options(&name, n, flat);
    }
    for e in &m.enum_type {
        raw_enum_options(&name, e, flat);
    }
}

fn raw_enum_options(scope: &str, e: &raw::Enum, flat: &mut Flat) {
    let name = format!("{scope}.{}", e.name.as_deref().unwrap_or(""));
    put_options(flat, format!("enum {name}"), OptKind::Enum, &e.options);
    for v in &e.value {
        let key = format!("enum value {name}.{}", v.name.as_deref().unwrap_or(""));
        put_options(flat, key, OptKind::EnumValue, &v.options);
    }
}

#[derive(Clone, Copy)]
enum OptKind {
    File,
    Message,
    Field,
    Oneof,
    Enum,
    EnumValue,
    Service,
    Method,
}

/// Human-readable label for an option field number, for the report only.
fn option_label(kind: OptKind, number: u64) -> &'static str {
    match (kind, number) {
        (OptKind::File, 11) => "go_package",
        (OptKind::Message, 7) => "map_entry",
        (OptKind::Field, 1059) => "(csi_secret)",
        (OptKind::Field, 1060) => "(alpha_field)",
        (OptKind::Message, 1060) => "(alpha_message)",
        (OptKind::Enum, 1060) => "(alpha_enum)",
        (OptKind::EnumValue, 1060) => "(alpha_enum_value)",
        (OptKind::Service, 1060) => "(alpha_service)",
        (OptKind::Method, 1060) => "(alpha_method)",
        _ => "",
    }
}

/// Records the options of one element (if any) as a sorted list of
/// `number=value` entries decoded from the protobuf wire format.
fn put_options(flat: &mut Flat, key: String, kind: OptKind, options: &Option<Vec<u8>>) {
    let Some(bytes) = options else { return };
    let mut entries = match decode_wire_fields(bytes) {
        Ok(fields) => fields
            .into_iter()
            .map(|(num, val)| format!("{num}{}={val}", option_label(kind, num)))
            .collect::<Vec<_>>(),
        Err(e) => vec![format!("<undecodable options: {e}>")],
    };
    if entries.is_empty() {
        return;
    }
    entries.sort();
    flat.entry(key)
        .or_default()
        .insert("options", format!("[{}]", entries.join(", ")));
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".into())
}

/// Splits a serialized message into (field number, rendered value) pairs.
fn decode_wire_fields(buf: &[u8]) -> Result<Vec<(u64, String)>, String> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let key = read_varint(buf, &mut pos)?;
        let (number, wire_type) = (key >> 3, key & 7);
        let take = |pos: &mut usize, n: usize| -> Result<Vec<u8>, String> {
            let end = pos
                .checked_add(n)
                .filter(|e| *e <= buf.len())
                .ok_or("truncated field")?;
            let v = buf[*pos..end].to_vec();
            *pos = end;
            Ok(v)
        };
        let value = match wire_type {
            0 => format!("varint:{}", read_varint(buf, &mut pos)?),
            1 => format!("fixed64:{:02x?}", take(&mut pos, 8)?),
            2 => {
                let len = read_varint(buf, &mut pos)? as usize;
                let data = take(&mut pos, len)?;
                match String::from_utf8(data.clone()) {
                    Ok(s) => format!("bytes:{s:?}"),
                    Err(_) => format!("bytes:{data:02x?}"),
                }
            }
            5 => format!("fixed32:{:02x?}", take(&mut pos, 4)?),
            other => return Err(format!("unsupported wire type {other}")),
        };
        out.push((number, value));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Comparison
// ---------------------------------------------------------------------------

/// Returns every difference between the upstream spec and our descriptors.
fn compare(spec: &Descriptors, ours: &Descriptors) -> Vec<String> {
    diff_flat(&flatten(spec), &flatten(ours))
}

fn diff_flat(spec: &Flat, ours: &Flat) -> Vec<String> {
    let mut diffs = Vec::new();
    for (key, spec_attrs) in spec {
        match ours.get(key) {
            None => diffs.push(format!("missing in ours: {key} {spec_attrs:?}")),
            Some(our_attrs) => {
                let names: std::collections::BTreeSet<&&str> =
                    spec_attrs.keys().chain(our_attrs.keys()).collect();
                for attr in names {
                    let a = spec_attrs
                        .get(*attr)
                        .map(String::as_str)
                        .unwrap_or("<none>");
                    let b = our_attrs.get(*attr).map(String::as_str).unwrap_or("<none>");
                    if a != b {
                        diffs.push(format!("{key}: {attr}: spec={a} ours={b}"));
                    }
                }
            }
        }
    }
    for (key, our_attrs) in ours {
        if !spec.contains_key(key) {
            diffs.push(format!("extra in ours (not in spec): {key} {our_attrs:?}"));
        }
    }
    diffs
}

fn count(flat: &Flat, prefix: &str) -> usize {
    flat.keys().filter(|k| k.starts_with(prefix)).count()
}

fn compile_ours(tmp: &Path) -> Descriptors {
    Descriptors::decode(&compile_descriptor_set(Path::new(OUR_PROTO), tmp, "ours"))
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn csi_proto_matches_upstream_spec_v1_12_0() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spec_proto = fetch_spec_proto(tmp.path());
    let spec = Descriptors::decode(&compile_descriptor_set(&spec_proto, tmp.path(), "spec"));
    let ours = compile_ours(tmp.path());

    // The comparison must be non-trivial: the spec set has to contain the
    // whole CSI v1.12.0 surface.
    let spec_flat = flatten(&spec);
    let services = count(&spec_flat, "service ");
    let messages = count(&spec_flat, "message ");
    let fields = count(&spec_flat, "field ");
    let enums = count(&spec_flat, "enum .");
    let methods = count(&spec_flat, "method ");
    let extensions = count(&spec_flat, "extension ");
    let with_options = spec_flat
        .values()
        .filter(|a| a.contains_key("options"))
        .count();
    println!(
        "spec {SPEC_MODULE}@{SPEC_VERSION}: {services} services, {methods} methods, \
         {messages} messages, {fields} fields, {enums} enums, {extensions} extensions, \
         {with_options} elements with options"
    );
    assert!(
        services >= 5,
        "expected >= 5 services in spec, found {services}"
    );
    assert!(
        messages >= 100,
        "expected >= 100 messages in spec, found {messages}"
    );
    assert!(
        methods >= 30,
        "expected >= 30 methods in spec, found {methods}"
    );
    assert!(
        fields >= 200,
        "expected >= 200 fields in spec, found {fields}"
    );
    assert!(
        extensions >= 7,
        "expected >= 7 extensions in spec, found {extensions}"
    );
    for key in [
        "service .csi.v1.SnapshotMetadata",
        "method .csi.v1.SnapshotMetadata.GetMetadataAllocated",
        "method .csi.v1.Controller.ControllerModifyVolume",
        "extension .csi.v1.csi_secret",
    ] {
        assert!(spec_flat.contains_key(key), "spec unexpectedly lacks {key}");
    }

    let diffs = compare(&spec, &ours);
    println!("differences found: {}", diffs.len());
    for d in &diffs {
        println!("  {d}");
    }
    assert!(
        diffs.is_empty(),
        "proto/csi.proto differs from CSI {SPEC_VERSION} in {} place(s):\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

/// Proves the checker can fail: mutated copies of our own descriptors must
/// be reported as different.
#[test]
fn comparison_detects_mutations() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ours = compile_ours(tmp.path());
    assert!(
        compare(&ours, &ours).is_empty(),
        "identical sets must not differ"
    );

    fn root_msg<'a>(d: &'a mut Descriptors, name: &str) -> &'a mut DescriptorProto {
        let file = d
            .set
            .file
            .iter_mut()
            .find(|f| f.name() == PROTO_FILE_NAME)
            .expect("our csi.proto in set");
        file.message_type
            .iter_mut()
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("message {name}"))
    }

    // 1. A changed field number.
    let mut m = ours.clone();
    let field = root_msg(&mut m, "CreateVolumeRequest")
        .field
        .iter_mut()
        .find(|f| f.name() == "name")
        .expect("CreateVolumeRequest.name");
    field.number = Some(99);
    let diffs = compare(&ours, &m);
    assert_eq!(
        diffs,
        vec!["field .csi.v1.CreateVolumeRequest.name: number: spec=1 ours=99".to_string()],
        "field number mutation"
    );

    // 2. A changed label (singular -> repeated) and type.
    let mut m = ours.clone();
    let field = root_msg(&mut m, "Volume")
        .field
        .iter_mut()
        .find(|f| f.name() == "volume_id")
        .expect("Volume.volume_id");
    field.set_label(prost_types::field_descriptor_proto::Label::Repeated);
    field.set_type(prost_types::field_descriptor_proto::Type::Bytes);
    assert_eq!(compare(&ours, &m).len(), 2, "label+type mutation");

    // 3. A removed enum value (nested enum).
    let mut m = ours.clone();
    root_msg(&mut m, "VolumeCapability").nested_type[2].enum_type[0]
        .value
        .pop();
    let diffs = compare(&ours, &m);
    assert!(
        diffs.iter().any(|d| d.contains(
            "enum value .csi.v1.VolumeCapability.AccessMode.Mode.SINGLE_NODE_MULTI_WRITER"
        )),
        "enum value removal not detected: {diffs:?}"
    );

    // 4. A field moved out of its oneof.
    let mut m = ours.clone();
    root_msg(&mut m, "VolumeContentSource").field[0].oneof_index = None;
    assert!(
        compare(&ours, &m)
            .iter()
            .any(|d| d.contains(": oneof: spec=type ours=-")),
        "oneof membership change not detected"
    );

    // 5. A streaming flag on a method.
    let mut m = ours.clone();
    m.set
        .file
        .iter_mut()
        .find(|f| f.name() == PROTO_FILE_NAME)
        .unwrap()
        .service
        .iter_mut()
        .find(|s| s.name() == "SnapshotMetadata")
        .unwrap()
        .method[0]
        .server_streaming = Some(false);
    assert_eq!(
        compare(&ours, &m),
        vec![
            "method .csi.v1.SnapshotMetadata.GetMetadataAllocated: server_streaming: spec=true ours=false"
                .to_string()
        ]
    );

    // 6. A dropped custom option: csi_secret on CreateVolumeRequest.secrets.
    let mut m = ours.clone();
    let file = m
        .raw
        .file
        .iter_mut()
        .find(|f| f.name.as_deref() == Some(PROTO_FILE_NAME))
        .unwrap();
    let msg = file
        .message_type
        .iter_mut()
        .find(|x| x.name.as_deref() == Some("CreateVolumeRequest"))
        .unwrap();
    let secrets = msg
        .field
        .iter_mut()
        .find(|f| f.name.as_deref() == Some("secrets"))
        .unwrap();
    assert!(secrets.options.is_some(), "secrets must carry csi_secret");
    secrets.options = None;
    assert_eq!(
        compare(&ours, &m),
        vec![
            "field .csi.v1.CreateVolumeRequest.secrets: options: spec=[1059(csi_secret)=varint:1] ours=<none>"
                .to_string()
        ]
    );

    // 7. A changed extension number.
    let mut m = ours.clone();
    let file = m
        .set
        .file
        .iter_mut()
        .find(|f| f.name() == PROTO_FILE_NAME)
        .unwrap();
    let ext = file
        .extension
        .iter_mut()
        .find(|x| x.name() == "alpha_service")
        .unwrap();
    ext.number = Some(1066);
    assert_eq!(
        compare(&ours, &m),
        vec!["extension .csi.v1.alpha_service: number: spec=1060 ours=1066".to_string()]
    );
}
