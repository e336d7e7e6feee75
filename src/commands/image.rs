//! `wavelink image`: an OCI image layout (a tar file) of a program and the shared libraries it
//! links, with no registry and no container engine, for `ctr images import`.
//!
//! The image has one uncompressed layer: the program, every library `ldd` lists for it (at the
//! same paths, so the dynamic loader finds them), extra files given with `--file`, and the
//! directories a container needs (`/tmp`, `/etc`). Everything is written deterministically
//! (mtime 0, owner root), so the same inputs give the same digests and a re-import is a no-op.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::json;
use sha2::{Digest, Sha256};

#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// Where to write the image (an OCI image layout as a tar file).
    #[arg(long, short = 'o', value_name = "FILE")]
    out: PathBuf,
    /// The image's name, as `ctr images import` will record it.
    #[arg(long, default_value = concat!("localhost/wavelink-fn:", env!("CARGO_PKG_VERSION")), value_name = "REF")]
    name: String,
    /// The program to package [default: wavelink-fn next to this binary]; it becomes the
    /// image's entrypoint, at /usr/local/bin/<file name>.
    #[arg(long, value_name = "PATH")]
    program: Option<PathBuf>,
    /// Arguments after the entrypoint (the image's Cmd).
    #[arg(long = "arg", value_name = "ARG")]
    args: Vec<String>,
    /// Another file for the image, as SRC or SRC:DEST (DEST absolute; default: the same path).
    #[arg(long = "file", value_name = "SRC[:DEST]")]
    files: Vec<String>,
    /// An environment variable of the image's config, NAME=VALUE.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// The user the image runs as by default (uid[:gid]); a pod spec may override it.
    #[arg(long, value_name = "UID[:GID]")]
    user: Option<String>,
}

/// What goes into an image.
pub struct ImageSpec<'a> {
    pub name: &'a str,
    pub program: &'a Path,
    /// The image's Cmd.
    pub args: &'a [String],
    /// Extra files: (source on this machine, absolute path in the image).
    pub files: &'a [(PathBuf, String)],
    /// `NAME=VALUE` entries of the image's config, after `PATH`.
    pub env: &'a [String],
    pub user: Option<&'a str>,
}

pub fn run(args: ImageArgs) -> anyhow::Result<()> {
    let program = match args.program {
        Some(program) => program,
        None => std::env::current_exe().context("finding this binary")?.with_file_name("wavelink-fn"),
    };
    let mut files = Vec::new();
    for spec in &args.files {
        let (source, dest) = match spec.split_once(':') {
            Some((source, dest)) => (PathBuf::from(source), dest.to_owned()),
            None => (PathBuf::from(spec), spec.clone()),
        };
        if !dest.starts_with('/') {
            bail!("--file {spec}: the destination must be an absolute path");
        }
        files.push((source, dest));
    }
    for value in &args.env {
        if !value.contains('=') {
            bail!("--env {value:?}: expected NAME=VALUE");
        }
    }
    let spec = ImageSpec {
        name: &args.name,
        program: &program,
        args: &args.args,
        files: &files,
        env: &args.env,
        user: args.user.as_deref(),
    };
    let count = write_image(&args.out, &spec)?;
    println!("{} ({}, {count} files) written to {}", args.name, program.display(), args.out.display());
    Ok(())
}

/// Writes the image as an OCI layout tar to `out`; returns how many files it holds.
pub fn write_image(out: &Path, spec: &ImageSpec<'_>) -> anyhow::Result<usize> {
    let program = spec.program.canonicalize().with_context(|| format!("program {}", spec.program.display()))?;
    let file_name = program.file_name().context("the program has no file name")?.to_string_lossy().into_owned();
    let entrypoint = format!("/usr/local/bin/{file_name}");

    // Destination path in the image → source on this machine.
    let mut files = BTreeMap::new();
    files.insert(entrypoint.clone(), program.clone());
    for library in shared_libraries(&program)? {
        files.insert(library.to_string_lossy().into_owned(), library);
    }
    for (source, dest) in spec.files {
        // An extra program brings its libraries too.
        for library in shared_libraries(source)? {
            files.insert(library.to_string_lossy().into_owned(), library);
        }
        files.insert(dest.clone(), source.clone());
    }

    let layer = layer_tar(&files)?;
    let mut env = vec!["PATH=/usr/local/bin:/usr/bin:/bin".to_owned()];
    env.extend(spec.env.iter().cloned());
    let config =
        ImageConfig { entrypoint: vec![entrypoint], cmd: spec.args.to_vec(), env, user: spec.user.map(str::to_owned) };
    let layout = layout_tar(spec.name, &config, &layer)?;
    std::fs::write(out, layout).with_context(|| format!("writing {}", out.display()))?;
    Ok(files.len())
}

/// The shared libraries and loader a dynamically linked program needs, from `ldd`; none for a
/// static one.
fn shared_libraries(program: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("ldd").arg(program).output().context("running ldd")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // A static program, a script or a data file: nothing to add.
        return Ok(Vec::new());
    }
    let mut libraries = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next().filter(|p| p.starts_with('/')),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libraries.push(PathBuf::from(path));
        } else if line.contains("not found") {
            bail!("{}: {}", program.display(), line.trim());
        }
    }
    Ok(libraries)
}

/// One uncompressed layer: every file with its parent directories, plus /tmp and /etc.
fn layer_tar(files: &BTreeMap<String, PathBuf>) -> anyhow::Result<Vec<u8>> {
    let mut dirs = BTreeMap::new();
    for dest in files.keys().map(String::as_str).chain(["/tmp/.keep", "/etc/.keep"]) {
        let mut path = Path::new(dest).parent();
        while let Some(dir) = path.filter(|d| *d != Path::new("/")) {
            let mode = if dir == Path::new("/tmp") { 0o1777 } else { 0o755 };
            dirs.insert(dir.to_string_lossy().trim_start_matches('/').to_owned(), mode);
            path = dir.parent();
        }
    }
    let mut tar = tar::Builder::new(Vec::new());
    for (dir, mode) in &dirs {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(*mode);
        header.set_size(0);
        header.set_mtime(0);
        tar.append_data(&mut header, format!("{dir}/"), std::io::empty())?;
    }
    // Names and nobody, so `id` and user lookups inside work.
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
    let group = b"root:x:0:\nnogroup:x:65534:\n";
    for (name, data) in [("etc/passwd", &passwd[..]), ("etc/group", &group[..])] {
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_mtime(0);
        tar.append_data(&mut header, name, data)?;
    }
    for (dest, source) in files {
        let data = std::fs::read(source).with_context(|| format!("reading {}", source.display()))?;
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o755);
        header.set_size(data.len() as u64);
        header.set_mtime(0);
        tar.append_data(&mut header, dest.trim_start_matches('/'), data.as_slice())?;
    }
    Ok(tar.into_inner()?)
}

struct ImageConfig {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    user: Option<String>,
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// The OCI image layout (oci-layout, index.json, blobs) around one layer, as a tar file.
fn layout_tar(name: &str, config: &ImageConfig, layer: &[u8]) -> anyhow::Result<Vec<u8>> {
    let layer_digest = sha256(layer);
    let mut image_config = json!({
        "architecture": go_arch(),
        "os": "linux",
        "config": { "Entrypoint": config.entrypoint, "Env": config.env },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    });
    if !config.cmd.is_empty() {
        image_config["config"]["Cmd"] = json!(config.cmd);
    }
    if let Some(user) = &config.user {
        image_config["config"]["User"] = json!(user);
    }
    let config_blob = serde_json::to_vec(&image_config)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha256(&config_blob), "size": config_blob.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar",
                     "digest": layer_digest, "size": layer.len() }],
    }))?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest), "size": manifest.len(),
            "annotations": { "io.containerd.image.name": name, "org.opencontainers.image.ref.name": name },
            "platform": { "architecture": go_arch(), "os": "linux" },
        }],
    }))?;

    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| -> std::io::Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_mtime(0);
        tar.append_data(&mut header, path, data)
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json", &index)?;
    for blob in [layer, config_blob.as_slice(), manifest.as_slice()] {
        let digest = sha256(blob);
        add(&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")), blob)?;
    }
    let mut out = tar.into_inner()?;
    out.flush()?;
    Ok(out)
}

/// The architecture as OCI (Go) names it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
