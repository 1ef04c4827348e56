//! torchvision's published ImageNet checkpoints: where they live, how to
//! preprocess for them, and how to download them into a local cache.
//!
//! The registry was taken from torchvision 0.29
//! (`torchvision.models.get_model_weights(arch)`: `.url` and
//! `.transforms().resize_size`; every entry uses a 224 centre crop, bilinear
//! resize and the usual ImageNet mean/std). As in `torch.hub`, the 8 hex
//! digits after the last `-` in the file name are the start of the file's
//! SHA-256, and a download is only accepted when they match.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

/// Where torchvision publishes its checkpoints.
pub const DEFAULT_BASE_URL: &str = "https://download.pytorch.org/models";

/// Environment variable that replaces [`DEFAULT_BASE_URL`] (a mirror, or a
/// local server in tests); the checkpoint's file name is appended to it.
pub const BASE_URL_ENV: &str = "RESNET_WEIGHTS_BASE_URL";

/// Environment variable naming the checkpoint cache directory.
pub const CACHE_DIR_ENV: &str = "RESNET_CACHE_DIR";

/// Which of torchvision's ImageNet-1k weight sets to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightsVariant {
    /// `IMAGENET1K_V1`: the original weights (what `pretrained=True` gave).
    ImagenetV1,
    /// `IMAGENET1K_V2`: torchvision's improved training recipe.
    ImagenetV2,
}

impl WeightsVariant {
    /// The CLI spelling: `imagenet-v1` or `imagenet-v2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ImagenetV1 => "imagenet-v1",
            Self::ImagenetV2 => "imagenet-v2",
        }
    }

    /// torchvision's enum member name: `IMAGENET1K_V1` or `IMAGENET1K_V2`.
    pub fn torchvision_name(self) -> &'static str {
        match self {
            Self::ImagenetV1 => "IMAGENET1K_V1",
            Self::ImagenetV2 => "IMAGENET1K_V2",
        }
    }
}

impl FromStr for WeightsVariant {
    type Err = anyhow::Error;

    /// Accepts `imagenet` (= `imagenet-v1`, which every architecture has),
    /// `imagenet-v1`, `imagenet-v2`, and torchvision's `IMAGENET1K_V1/V2`,
    /// case-insensitively.
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "imagenet" | "imagenet-v1" | "imagenet1k-v1" => Ok(Self::ImagenetV1),
            "imagenet-v2" | "imagenet1k-v2" => Ok(Self::ImagenetV2),
            _ => bail!("unknown weights variant '{s}'; expected imagenet, imagenet-v1 or imagenet-v2"),
        }
    }
}

impl std::fmt::Display for WeightsVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One published checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PretrainedSpec {
    /// torchvision architecture name, e.g. `resnet50`.
    pub arch: &'static str,
    pub variant: WeightsVariant,
    /// Canonical download URL on download.pytorch.org.
    pub url: &'static str,
    /// File name, e.g. `resnet50-0676ba61.pth`.
    pub file_name: &'static str,
    /// Lower-case hex prefix of the file's SHA-256, e.g. `0676ba61`.
    pub sha256_prefix: &'static str,
    /// Shorter side is resized to this before the centre crop (256 or 232).
    pub resize: u32,
    /// Centre-crop size (224 for all of these).
    pub crop: u32,
}

macro_rules! spec {
    ($arch:literal, $variant:ident, $hash:literal, $resize:literal) => {
        PretrainedSpec {
            arch: $arch,
            variant: WeightsVariant::$variant,
            url: concat!("https://download.pytorch.org/models/", $arch, "-", $hash, ".pth"),
            file_name: concat!($arch, "-", $hash, ".pth"),
            sha256_prefix: $hash,
            resize: $resize,
            crop: 224,
        }
    };
}

static SPECS: [PretrainedSpec; 17] = [
    spec!("resnet18", ImagenetV1, "f37072fd", 256),
    spec!("resnet34", ImagenetV1, "b627a593", 256),
    spec!("resnet50", ImagenetV1, "0676ba61", 256),
    spec!("resnet50", ImagenetV2, "11ad3fa6", 232),
    spec!("resnet101", ImagenetV1, "63fe2227", 256),
    spec!("resnet101", ImagenetV2, "cd907fc2", 232),
    spec!("resnet152", ImagenetV1, "394f9c45", 256),
    spec!("resnet152", ImagenetV2, "f82ba261", 232),
    spec!("wide_resnet50_2", ImagenetV1, "95faca4d", 256),
    spec!("wide_resnet50_2", ImagenetV2, "9ba9bcbe", 232),
    spec!("wide_resnet101_2", ImagenetV1, "32ee1156", 256),
    spec!("wide_resnet101_2", ImagenetV2, "d733dc28", 232),
    spec!("resnext50_32x4d", ImagenetV1, "7cdf4587", 256),
    spec!("resnext50_32x4d", ImagenetV2, "1a0047aa", 232),
    spec!("resnext101_32x8d", ImagenetV1, "8ba56ff5", 256),
    spec!("resnext101_32x8d", ImagenetV2, "110c445d", 232),
    // torchvision names this one V1, but it was trained with the V2 recipe
    // and its transforms resize to 232.
    spec!("resnext101_64x4d", ImagenetV1, "173b62eb", 232),
];

/// Every known checkpoint, grouped by architecture.
pub fn all_specs() -> &'static [PretrainedSpec] {
    &SPECS
}

/// The variants published for `arch` (empty if the arch is unknown).
pub fn variants_for(arch: &str) -> Vec<WeightsVariant> {
    SPECS.iter().filter(|s| s.arch == arch).map(|s| s.variant).collect()
}

/// The checkpoint for `arch` (torchvision name, e.g. `resnet50`) and `variant`.
pub fn lookup(arch: &str, variant: WeightsVariant) -> Result<&'static PretrainedSpec> {
    if let Some(spec) = SPECS.iter().find(|s| s.arch == arch && s.variant == variant) {
        return Ok(spec);
    }
    let available = variants_for(arch);
    if available.is_empty() {
        let mut archs: Vec<&str> = SPECS.iter().map(|s| s.arch).collect();
        archs.dedup();
        bail!("no pretrained weights for unknown architecture '{arch}'; known: {}", archs.join(", "));
    }
    let names: Vec<&str> = available.iter().map(|v| v.as_str()).collect();
    bail!("torchvision publishes no {} weights for {arch}; available: {}", variant.torchvision_name(), names.join(", "))
}

type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<OsString>;

fn env_var(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// `$RESNET_CACHE_DIR`, else `$XDG_CACHE_HOME/resnet/checkpoints`, else
/// `$HOME/.cache/resnet/checkpoints`.
pub fn default_cache_dir() -> Result<PathBuf> {
    cache_dir_from(&env_var)
}

fn cache_dir_from(env: EnvLookup) -> Result<PathBuf> {
    if let Some(dir) = env(CACHE_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(xdg) = env("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(xdg).join("resnet").join("checkpoints"));
    }
    match env("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("resnet").join("checkpoints")),
        None => bail!("cannot choose a weights cache directory: set {CACHE_DIR_ENV} or HOME"),
    }
}

/// torch.hub's checkpoint directory, resolved as torch does:
/// `$TORCH_HOME/hub/checkpoints`, else `$XDG_CACHE_HOME/torch/hub/checkpoints`,
/// else `~/.cache/torch/hub/checkpoints`.
pub fn torch_hub_checkpoint_dir() -> Option<PathBuf> {
    torch_dir_from(&env_var)
}

fn torch_dir_from(env: EnvLookup) -> Option<PathBuf> {
    let torch_home = match env("TORCH_HOME") {
        Some(dir) => expand_tilde(PathBuf::from(dir), env),
        None => {
            let cache = match env("XDG_CACHE_HOME") {
                Some(dir) => PathBuf::from(dir),
                None => PathBuf::from(env("HOME")?).join(".cache"),
            };
            cache.join("torch")
        }
    };
    Some(torch_home.join("hub").join("checkpoints"))
}

fn expand_tilde(path: PathBuf, env: EnvLookup) -> PathBuf {
    match (path.strip_prefix("~"), env("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path,
    }
}

/// The URL `spec` is downloaded from: `base_url_override`, else
/// `$RESNET_WEIGHTS_BASE_URL`, with the file name appended; else `spec.url`.
pub fn download_url(spec: &PretrainedSpec, base_url_override: Option<&str>) -> String {
    let env_base = env_var(BASE_URL_ENV).and_then(|v| v.into_string().ok());
    match base_url_override.map(str::to_owned).or(env_base) {
        Some(base) => format!("{}/{}", base.trim_end_matches('/'), spec.file_name),
        None => spec.url.to_owned(),
    }
}

/// Returns a verified local copy of `spec`'s checkpoint, downloading it if
/// needed.
///
/// Looks first in torch's hub cache (see [`torch_hub_checkpoint_dir`]), then
/// in `cache_dir`; a file found there is reused only if its full SHA-256
/// starts with `spec.sha256_prefix` (a bad copy in `cache_dir` is replaced, a
/// bad copy in torch's cache is ignored). Otherwise downloads from
/// [`download_url`] into a temporary file in `cache_dir`, fsyncs and verifies
/// it, and renames it into place; a failed or corrupt download leaves nothing
/// behind. `show_progress` draws a progress bar on stderr.
pub fn fetch_pretrained(
    spec: &PretrainedSpec,
    cache_dir: &Path,
    base_url_override: Option<&str>,
    show_progress: bool,
) -> Result<PathBuf> {
    let torch_dirs: Vec<PathBuf> = torch_hub_checkpoint_dir().into_iter().collect();
    let url = download_url(spec, base_url_override);
    fetch_with(spec, cache_dir, &torch_dirs, &url, show_progress)
}

fn fetch_with(
    spec: &PretrainedSpec,
    cache_dir: &Path,
    extra_dirs: &[PathBuf],
    url: &str,
    show_progress: bool,
) -> Result<PathBuf> {
    for dir in extra_dirs {
        let candidate = dir.join(spec.file_name);
        if candidate.is_file() && matches!(verify_file(&candidate, spec.sha256_prefix), Ok(true)) {
            return Ok(candidate);
        }
    }

    let target = cache_dir.join(spec.file_name);
    if target.is_file() {
        if verify_file(&target, spec.sha256_prefix)? {
            return Ok(target);
        }
        eprintln!(
            "warning: cached {} does not match SHA-256 prefix {}; downloading it again",
            target.display(),
            spec.sha256_prefix
        );
        fs::remove_file(&target).with_context(|| format!("cannot remove corrupt cached file {}", target.display()))?;
    }

    fs::create_dir_all(cache_dir).with_context(|| {
        format!("cannot create weights cache directory {} (set {CACHE_DIR_ENV} to choose another)", cache_dir.display())
    })?;
    download_verified(spec, url, cache_dir, &target, show_progress)?;
    Ok(target)
}

/// Whether the SHA-256 of the file at `path` starts with `prefix`.
fn verify_file(path: &Path, prefix: &str) -> Result<bool> {
    let hash = sha256_file(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hash.starts_with(&prefix.to_ascii_lowercase()))
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(to_hex(&hasher.finalize()))
}

fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Deletes the temporary download unless it was renamed into place.
struct TempGuard {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn local_file_hint(spec: &PretrainedSpec, cache_dir: &Path) -> String {
    format!(
        "To use a local copy instead, download {url} on a machine with internet access and pass it with\n    \
         --weights /path/to/{file}\n\
         or copy it to {cache}. A mirror can be set with {BASE_URL_ENV}=<base URL>.",
        url = spec.url,
        file = spec.file_name,
        cache = cache_dir.join(spec.file_name).display(),
    )
}

fn download_verified(
    spec: &PretrainedSpec,
    url: &str,
    cache_dir: &Path,
    target: &Path,
    show_progress: bool,
) -> Result<()> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(120))
        .build();
    let response = match agent.get(url).call() {
        Ok(response) => response,
        Err(ureq::Error::Status(code, response)) => {
            let what = match code {
                404 => " (no such file on this server; check the URL or the mirror)",
                403 => " (access denied by the server)",
                500..=599 => " (server error; try again later)",
                _ => "",
            };
            bail!(
                "failed to download {} {} weights: HTTP {code} {}{what} for {url}\n{}",
                spec.arch,
                spec.variant.torchvision_name(),
                response.status_text(),
                local_file_hint(spec, cache_dir)
            );
        }
        Err(ureq::Error::Transport(t)) => {
            let offline = match t.kind() {
                ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme => {
                    bail!("invalid weights URL {url}: {t} (check {BASE_URL_ENV})")
                }
                ureq::ErrorKind::Dns
                | ureq::ErrorKind::ConnectionFailed
                | ureq::ErrorKind::Io
                | ureq::ErrorKind::ProxyConnect => "; this machine may be offline or unable to reach the server",
                _ => "",
            };
            bail!(
                "failed to download {} {} weights: {t}{offline}.\n{}",
                spec.arch,
                spec.variant.torchvision_name(),
                local_file_hint(spec, cache_dir)
            );
        }
    };

    let total: Option<u64> = if response.header("Content-Encoding").is_none() {
        response.header("Content-Length").and_then(|v| v.trim().parse().ok())
    } else {
        None
    };

    let nonce = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let tmp_path = cache_dir.join(format!(".{}.{}.{nonce}.partial", spec.file_name, std::process::id()));
    let mut guard = TempGuard { path: tmp_path.clone(), armed: true };
    let file = File::create(&tmp_path).with_context(|| {
        format!("cannot create {} (set {CACHE_DIR_ENV} to choose another cache)", tmp_path.display())
    })?;
    let mut writer = BufWriter::with_capacity(1 << 20, file);

    let bar = progress_bar(total, spec.file_name, show_progress);
    if show_progress {
        eprintln!("Downloading {url} to {}", target.display());
    }
    let mut reader = response.into_reader();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut received: u64 = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                bar.abandon();
                bail!(
                    "download of {url} failed after {received} bytes: {e}; the connection may have dropped.\n{}",
                    local_file_hint(spec, cache_dir)
                );
            }
        };
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n]).with_context(|| format!("cannot write {} (disk full?)", tmp_path.display()))?;
        received += n as u64;
        bar.set_position(received);
    }
    bar.finish_and_clear();

    if let Some(expected) = total.filter(|&t| t != received) {
        bail!("download of {url} was truncated: got {received} of {expected} bytes");
    }
    let file = writer.into_inner().map_err(|e| anyhow!("cannot write {}: {}", tmp_path.display(), e.error()))?;
    file.sync_all().with_context(|| format!("cannot fsync {}", tmp_path.display()))?;
    drop(file);

    let actual = to_hex(&hasher.finalize());
    if !actual.starts_with(&spec.sha256_prefix.to_ascii_lowercase()) {
        bail!(
            "checksum mismatch for {url}: expected SHA-256 starting with {}, got {actual}; \
             the corrupt download was deleted",
            spec.sha256_prefix
        );
    }

    fs::rename(&tmp_path, target)
        .with_context(|| format!("cannot move {} to {}", tmp_path.display(), target.display()))?;
    guard.armed = false;
    // Make the rename durable; not all platforms can fsync a directory.
    if let Ok(dir) = File::open(cache_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn progress_bar(total: Option<u64>, file_name: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let (bar, template) = match total {
        Some(len) => (
            ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr()),
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        ),
        None => (
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            "{msg} {spinner} {bytes} {binary_bytes_per_sec}",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(file_name.to_owned());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn fake_env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = vars.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
        move |name| map.get(name).cloned()
    }

    fn temp_dir(tag: &str) -> PathBuf {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("resnet-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn dir_entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|rd| rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    fn payload() -> Vec<u8> {
        (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect()
    }

    /// A spec named `testnet` whose hash prefix matches `body`.
    fn spec_for(body: &[u8]) -> PretrainedSpec {
        let prefix: &'static str = Box::leak(to_hex(&Sha256::digest(body))[..8].to_owned().into_boxed_str());
        let file_name: &'static str = Box::leak(format!("testnet-{prefix}.pth").into_boxed_str());
        PretrainedSpec {
            arch: "testnet",
            variant: WeightsVariant::ImagenetV1,
            url: Box::leak(format!("{DEFAULT_BASE_URL}/{file_name}").into_boxed_str()),
            file_name,
            sha256_prefix: prefix,
            resize: 256,
            crop: 224,
        }
    }

    fn http(status: &str, content_length: usize, body: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {content_length}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    struct Server {
        base: String,
        hits: Arc<AtomicUsize>,
    }

    /// An HTTP/1.1 server on 127.0.0.1 answering `max_requests` requests
    /// with `reply(path)`, then exiting.
    fn serve(max_requests: usize, reply: impl Fn(&str) -> Vec<u8> + Send + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/models", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        std::thread::spawn(move || {
            for _ in 0..max_requests {
                let Ok((mut stream, _)) = listener.accept() else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 65536 {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let path = text.split_whitespace().nth(1).unwrap_or("").to_owned();
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(&reply(&path));
            }
        });
        Server { base, hits }
    }

    fn url_of(server: &Server, spec: &PretrainedSpec) -> String {
        download_url(spec, Some(&server.base))
    }

    #[test]
    fn variant_parsing() {
        for s in ["imagenet", "imagenet-v1", "IMAGENET1K_V1", "ImageNet_V1"] {
            assert_eq!(s.parse::<WeightsVariant>().unwrap(), WeightsVariant::ImagenetV1, "{s}");
        }
        for s in ["imagenet-v2", "IMAGENET1K_V2"] {
            assert_eq!(s.parse::<WeightsVariant>().unwrap(), WeightsVariant::ImagenetV2, "{s}");
        }
        let err = "imagenet-v3".parse::<WeightsVariant>().unwrap_err().to_string();
        assert!(err.contains("imagenet-v2"), "{err}");
    }

    #[test]
    fn registry_matches_torchvision() {
        assert_eq!(all_specs().len(), 17);
        for s in all_specs() {
            assert_eq!(s.file_name, format!("{}-{}.pth", s.arch, s.sha256_prefix));
            assert_eq!(s.url, format!("{DEFAULT_BASE_URL}/{}", s.file_name));
            assert_eq!(s.sha256_prefix.len(), 8);
            assert!(s.sha256_prefix.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            let expected_resize = match (s.arch, s.variant) {
                ("resnext101_64x4d", _) | (_, WeightsVariant::ImagenetV2) => 232,
                _ => 256,
            };
            assert_eq!(s.resize, expected_resize, "{} {}", s.arch, s.variant);
            assert_eq!(s.crop, 224);
        }
        let r50 = lookup("resnet50", WeightsVariant::ImagenetV1).unwrap();
        assert_eq!(r50.url, "https://download.pytorch.org/models/resnet50-0676ba61.pth");
        let r50v2 = lookup("resnet50", WeightsVariant::ImagenetV2).unwrap();
        assert_eq!(r50v2.url, "https://download.pytorch.org/models/resnet50-11ad3fa6.pth");
        assert_eq!(r50v2.resize, 232);
        assert_eq!(variants_for("resnet18"), [WeightsVariant::ImagenetV1]);
        assert_eq!(variants_for("wide_resnet101_2").len(), 2);
    }

    #[test]
    fn lookup_errors_list_what_exists() {
        let err = lookup("resnet18", WeightsVariant::ImagenetV2).unwrap_err().to_string();
        assert!(err.contains("IMAGENET1K_V2") && err.contains("available: imagenet-v1"), "{err}");
        let err = lookup("resnet9000", WeightsVariant::ImagenetV1).unwrap_err().to_string();
        assert!(err.contains("resnet9000") && err.contains("resnext101_64x4d"), "{err}");
    }

    #[test]
    fn cache_dirs_follow_env() {
        let all = fake_env(&[("RESNET_CACHE_DIR", "/r"), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]);
        assert_eq!(cache_dir_from(&all).unwrap(), PathBuf::from("/r"));
        let xdg = fake_env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]);
        assert_eq!(cache_dir_from(&xdg).unwrap(), PathBuf::from("/x/resnet/checkpoints"));
        let home = fake_env(&[("HOME", "/h")]);
        assert_eq!(cache_dir_from(&home).unwrap(), PathBuf::from("/h/.cache/resnet/checkpoints"));
        assert!(cache_dir_from(&fake_env(&[])).is_err());

        let torch = fake_env(&[("TORCH_HOME", "~/t"), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]);
        assert_eq!(torch_dir_from(&torch).unwrap(), PathBuf::from("/h/t/hub/checkpoints"));
        assert_eq!(torch_dir_from(&xdg).unwrap(), PathBuf::from("/x/torch/hub/checkpoints"));
        assert_eq!(torch_dir_from(&home).unwrap(), PathBuf::from("/h/.cache/torch/hub/checkpoints"));
        assert_eq!(torch_dir_from(&fake_env(&[])), None);
    }

    #[test]
    fn base_url_override_appends_file_name() {
        let spec = lookup("resnet50", WeightsVariant::ImagenetV1).unwrap();
        assert_eq!(download_url(spec, Some("http://m/x/")), "http://m/x/resnet50-0676ba61.pth");
    }

    #[test]
    fn downloads_verifies_and_reuses() {
        let body = payload();
        let spec = spec_for(&body);
        let served = body.clone();
        let server = serve(2, move |_| http("200 OK", served.len(), &served));
        let cache = temp_dir("ok");
        let url = url_of(&server, &spec);

        let path = fetch_with(&spec, &cache.join("sub"), &[], &url, false).unwrap();
        assert_eq!(path, cache.join("sub").join(spec.file_name));
        assert_eq!(fs::read(&path).unwrap(), body);
        assert_eq!(server.hits.load(Ordering::SeqCst), 1);
        assert_eq!(dir_entries(&cache.join("sub")), [spec.file_name]);

        let again = fetch_with(&spec, &cache.join("sub"), &[], &url, false).unwrap();
        assert_eq!(again, path);
        assert_eq!(server.hits.load(Ordering::SeqCst), 1, "cached file must be reused");
        let _ = fs::remove_dir_all(&cache);
    }

    #[test]
    fn corrupt_download_is_rejected_and_removed() {
        let body = payload();
        let spec = spec_for(&body);
        let mut bad = body.clone();
        bad[1234] ^= 0xff;
        let server = serve(1, move |_| http("200 OK", bad.len(), &bad));
        let cache = temp_dir("corrupt");
        let url = url_of(&server, &spec);

        let err = fetch_with(&spec, &cache, &[], &url, false).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch") && err.contains(&url), "{err}");
        assert!(err.contains(spec.sha256_prefix), "{err}");
        assert!(dir_entries(&cache).is_empty(), "left behind: {:?}", dir_entries(&cache));
        let _ = fs::remove_dir_all(&cache);
    }

    #[test]
    fn truncated_download_is_rejected_and_removed() {
        let body = payload();
        let spec = spec_for(&body);
        let half = body[..body.len() / 2].to_vec();
        let full_len = body.len();
        let server = serve(1, move |_| http("200 OK", full_len, &half));
        let cache = temp_dir("trunc");

        let err = fetch_with(&spec, &cache, &[], &url_of(&server, &spec), false).unwrap_err();
        assert!(err.to_string().contains("bytes"), "{err}");
        assert!(dir_entries(&cache).is_empty(), "left behind: {:?}", dir_entries(&cache));
        let _ = fs::remove_dir_all(&cache);
    }

    #[test]
    fn http_404_is_a_clear_error() {
        let spec = spec_for(b"anything");
        let server = serve(1, |_| http("404 Not Found", 9, b"not found"));
        let cache = temp_dir("404");
        let url = url_of(&server, &spec);

        let err = fetch_with(&spec, &cache, &[], &url, false).unwrap_err().to_string();
        assert!(err.contains("HTTP 404 Not Found") && err.contains(&url), "{err}");
        assert!(dir_entries(&cache).is_empty());
        let _ = fs::remove_dir_all(&cache);
    }

    #[test]
    fn connection_refused_explains_how_to_work_offline() {
        let spec = spec_for(b"anything");
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}/models/{}", spec.file_name);
        let cache = temp_dir("offline");

        let err = fetch_with(&spec, &cache, &[], &url, false).unwrap_err().to_string();
        assert!(err.contains("failed to download") && err.contains("offline"), "{err}");
        assert!(err.contains(&format!("--weights /path/to/{}", spec.file_name)), "{err}");
        assert!(err.contains(spec.url), "{err}");
        assert!(dir_entries(&cache).is_empty());
        let _ = fs::remove_dir_all(&cache);
    }

    #[test]
    fn torch_cache_is_used_only_when_it_verifies() {
        let body = payload();
        let spec = spec_for(&body);
        let torch_dirs = [temp_dir("torch")];
        let torch = &torch_dirs[0];
        let cache = temp_dir("own");
        fs::write(torch.join(spec.file_name), &body).unwrap();
        let dead = format!("http://127.0.0.1:1/models/{}", spec.file_name);
        let found = fetch_with(&spec, &cache, &torch_dirs, &dead, false).unwrap();
        assert_eq!(found, torch.join(spec.file_name));
        assert!(dir_entries(&cache).is_empty());

        // A corrupt torch copy is ignored (and left alone); we download our own.
        fs::write(torch.join(spec.file_name), b"garbage").unwrap();
        let served = body.clone();
        let server = serve(1, move |_| http("200 OK", served.len(), &served));
        let got = fetch_with(&spec, &cache, &torch_dirs, &url_of(&server, &spec), false).unwrap();
        assert_eq!(got, cache.join(spec.file_name));
        assert_eq!(fs::read(torch.join(spec.file_name)).unwrap(), b"garbage");
        let _ = fs::remove_dir_all(torch);
        let _ = fs::remove_dir_all(&cache);
    }

    #[test]
    fn corrupt_cached_file_is_downloaded_again() {
        let body = payload();
        let spec = spec_for(&body);
        let cache = temp_dir("stale");
        fs::write(cache.join(spec.file_name), b"truncated").unwrap();
        let served = body.clone();
        let server = serve(1, move |_| http("200 OK", served.len(), &served));

        let path = fetch_with(&spec, &cache, &[], &url_of(&server, &spec), false).unwrap();
        assert_eq!(fs::read(path).unwrap(), body);
        assert_eq!(server.hits.load(Ordering::SeqCst), 1);
        let _ = fs::remove_dir_all(&cache);
    }
}
