//! Bundle manifests: `manifest.toml`, parsed by hand from a fixed subset of TOML.
//!
//! A bundle is a directory holding a `manifest.toml` and the plugin's shared library:
//!
//! ```toml
//! # A plugin bundle.
//! name = "greeter"                       # the bundle name (its id hashes it)
//! version = "1.4.0"
//! provides = ["greeter@1.4", "stats@2.0"] # contracts: name@major.minor
//! depends = ["base-services"]            # bundles that must be loaded first
//! requires = ["clock@1.2"]               # contracts other bundles must provide: name@major.minor
//! reload_with_dependencies = true        # reload me after a dependency reloads
//!
//! [library]                              # the shared library, per platform
//! linux = "libgreeter.so"
//! macos = "libgreeter.dylib"
//! ```
//!
//! The workspace carries no TOML crate, and a manifest needs very little of TOML, so this
//! module parses exactly this subset: comments, bare or quoted keys, `[table]` headers, basic
//! (`"…"`, with escapes) and literal (`'…'`) strings, booleans and arrays of strings (which may
//! span lines). Anything else — numbers, inline tables, arrays of tables, dotted keys,
//! multi-line strings — is a syntax error with its line number, never a panic or a silent
//! misreading. Unknown keys are errors too, so a typo does not silently drop a setting.

use std::collections::HashSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use crate::abi::Version;
use crate::ids::ContractId;

/// The file name of a bundle's manifest.
pub const MANIFEST_FILE: &str = "manifest.toml";

/// Errors reading or validating a manifest; each names the manifest's path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The bundle directory has no `manifest.toml`.
    #[error("{}: no manifest (a bundle directory needs a manifest.toml)", path.display())]
    Missing {
        /// The path looked for.
        path: PathBuf,
    },
    /// The manifest could not be read.
    #[error("{}: cannot read the manifest", path.display())]
    Io {
        /// The manifest.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is not UTF-8.
    #[error("{}: the manifest is not UTF-8", path.display())]
    NotUtf8 {
        /// The manifest.
        path: PathBuf,
    },
    /// Text outside the supported TOML subset, or malformed TOML.
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        /// The manifest.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A required key is absent.
    #[error("{}: missing key `{key}`", path.display())]
    MissingKey {
        /// The manifest.
        path: PathBuf,
        /// The key (`table.key` inside a table).
        key: &'static str,
    },
    /// A key this manifest format does not define (a typo?).
    #[error("{}:{line}: unknown key `{key}`", path.display())]
    UnknownKey {
        /// The manifest.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The key as written (`table.key` inside a table).
        key: String,
    },
    /// A key has a value of the wrong kind or an invalid value.
    #[error("{}:{line}: `{key}`: {message}", path.display())]
    InvalidValue {
        /// The manifest.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The manifest names no library for this platform.
    #[error("{}: no library for this platform (set `library.{platform}`)", path.display())]
    NoLibraryForPlatform {
        /// The manifest.
        path: PathBuf,
        /// The platform key looked for (`linux`, `macos`).
        platform: &'static str,
    },
}

/// A contract a bundle declares it provides.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProvidedContract {
    /// The contract name.
    pub name: String,
    /// Its major version (part of the id).
    pub major: u32,
    /// The lowest minor the bundle provides.
    pub minor: u32,
}

impl ProvidedContract {
    /// The contract id.
    pub fn id(&self) -> ContractId {
        ContractId::new(&self.name, self.major)
    }
}

impl fmt::Display for ProvidedContract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}.{}", self.name, self.major, self.minor)
    }
}

/// A contract a bundle requires from the loaded bundles: `name@major.minor`, met by a provider
/// of the same name and major at that minor or a higher one.
///
/// The runtime refuses a load whose requirements no loaded bundle meets, and a reload or an
/// unload that would leave a loaded bundle's requirement unmet.
///
/// ```
/// use polyplug_runtime::manifest::{ProvidedContract, RequiredContract};
///
/// let required = RequiredContract { name: "clock".into(), major: 1, minor: 2 };
/// let provided = |minor| ProvidedContract { name: "clock".into(), major: 1, minor };
/// assert!(required.is_met_by(&provided(3)));
/// assert!(!required.is_met_by(&provided(1)));
/// assert_eq!(required.to_string(), "clock@1.2");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequiredContract {
    /// The contract name.
    pub name: String,
    /// Its major version (part of the id).
    pub major: u32,
    /// The lowest minor that meets the requirement.
    pub minor: u32,
}

impl RequiredContract {
    /// The contract id.
    pub fn id(&self) -> ContractId {
        ContractId::new(&self.name, self.major)
    }

    /// Whether `provided` meets this requirement (same name and major, minor at least ours).
    pub fn is_met_by(&self, provided: &ProvidedContract) -> bool {
        provided.name == self.name && provided.major == self.major && provided.minor >= self.minor
    }
}

impl fmt::Display for RequiredContract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}.{}", self.name, self.major, self.minor)
    }
}

/// The library file of a bundle, per platform (paths relative to the bundle directory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LibraryFiles {
    /// `library.linux`.
    pub linux: Option<PathBuf>,
    /// `library.macos`.
    pub macos: Option<PathBuf>,
}

/// A parsed, validated `manifest.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The bundle name: `[A-Za-z0-9._-]`, 1 to 128 bytes.
    pub name: String,
    /// The bundle version (`major.minor.patch`).
    pub version: Version,
    /// The library per platform.
    pub library: LibraryFiles,
    /// The contracts the bundle provides; loading fails unless the plugin registers each.
    pub provides: Vec<ProvidedContract>,
    /// Bundles that must be loaded first (and that this one may not outlive).
    pub depends: Vec<String>,
    /// Contracts other loaded bundles must provide while this one is loaded.
    pub requires: Vec<RequiredContract>,
    /// Reload this bundle after a dependency reloads (cascade reload).
    pub reload_with_dependencies: bool,
}

impl Manifest {
    /// Reads `<dir>/manifest.toml`.
    ///
    /// # Errors
    ///
    /// Any [`ManifestError`]; each names the manifest path.
    pub fn from_dir(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ManifestError::Missing { path });
            }
            Err(source) => return Err(ManifestError::Io { path, source }),
        };
        let text =
            String::from_utf8(bytes).map_err(|_| ManifestError::NotUtf8 { path: path.clone() })?;
        Self::parse(&text, &path)
    }

    /// Parses manifest text; `origin` is the path named in errors.
    ///
    /// # Errors
    ///
    /// [`ManifestError::Syntax`], [`ManifestError::MissingKey`],
    /// [`ManifestError::UnknownKey`] or [`ManifestError::InvalidValue`].
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ManifestError> {
        let entries = parse_document(text).map_err(|e| ManifestError::Syntax {
            path: origin.to_owned(),
            line: e.line,
            message: e.message,
        })?;
        let invalid = |line: usize, key: &str, message: String| ManifestError::InvalidValue {
            path: origin.to_owned(),
            line,
            key: key.to_owned(),
            message,
        };
        let mut name = None;
        let mut version = None;
        let mut library = LibraryFiles::default();
        let mut provides = Vec::new();
        let mut depends = Vec::new();
        let mut requires: Vec<RequiredContract> = Vec::new();
        let mut reload_with_dependencies = false;
        for entry in entries {
            let full_key = if entry.table.is_empty() {
                entry.key.clone()
            } else {
                format!("{}.{}", entry.table, entry.key)
            };
            let line = entry.line;
            match full_key.as_str() {
                "name" => {
                    let value = entry.value.string(line, &full_key, origin)?;
                    if !valid_name(&value) {
                        return Err(invalid(
                            line,
                            &full_key,
                            format!(
                                "{value:?} is not a bundle name ([A-Za-z0-9._-], 1 to 128 bytes)"
                            ),
                        ));
                    }
                    name = Some(value);
                }
                "version" => {
                    let value = entry.value.string(line, &full_key, origin)?;
                    version = Some(parse_version(&value).ok_or_else(|| {
                        invalid(
                            line,
                            &full_key,
                            format!("{value:?} is not major.minor.patch"),
                        )
                    })?);
                }
                "provides" => {
                    let mut seen = HashSet::new();
                    for item in entry.value.strings(line, &full_key, origin)? {
                        let contract = parse_provided(&item).ok_or_else(|| {
                            invalid(line, &full_key, format!("{item:?} is not name@major.minor"))
                        })?;
                        if !seen.insert(contract.id()) {
                            return Err(invalid(
                                line,
                                &full_key,
                                format!("{item:?} is listed twice"),
                            ));
                        }
                        provides.push(contract);
                    }
                }
                "depends" => {
                    for item in entry.value.strings(line, &full_key, origin)? {
                        if !valid_name(&item) {
                            return Err(invalid(
                                line,
                                &full_key,
                                format!("{item:?} is not a bundle name"),
                            ));
                        }
                        if !depends.contains(&item) {
                            depends.push(item);
                        }
                    }
                }
                "requires" => {
                    for item in entry.value.strings(line, &full_key, origin)? {
                        let contract = parse_provided(&item).ok_or_else(|| {
                            invalid(line, &full_key, format!("{item:?} is not name@major.minor"))
                        })?;
                        if requires.iter().any(|r| r.id() == contract.id()) {
                            return Err(invalid(
                                line,
                                &full_key,
                                format!("{item:?}: contract listed twice"),
                            ));
                        }
                        requires.push(RequiredContract {
                            name: contract.name,
                            major: contract.major,
                            minor: contract.minor,
                        });
                    }
                }
                "reload_with_dependencies" => {
                    reload_with_dependencies = entry.value.boolean(line, &full_key, origin)?;
                }
                "library.linux" | "library.macos" => {
                    let value = entry.value.string(line, &full_key, origin)?;
                    let path = PathBuf::from(&value);
                    let inside = !value.is_empty()
                        && path
                            .components()
                            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
                    if !inside {
                        return Err(invalid(
                            line,
                            &full_key,
                            format!("{value:?} must be a relative path inside the bundle"),
                        ));
                    }
                    if full_key == "library.linux" {
                        library.linux = Some(path);
                    } else {
                        library.macos = Some(path);
                    }
                }
                _ => {
                    return Err(ManifestError::UnknownKey {
                        path: origin.to_owned(),
                        line,
                        key: full_key,
                    });
                }
            }
        }
        let missing = |key| ManifestError::MissingKey {
            path: origin.to_owned(),
            key,
        };
        Ok(Self {
            name: name.ok_or_else(|| missing("name"))?,
            version: version.ok_or_else(|| missing("version"))?,
            library,
            provides,
            depends,
            requires,
            reload_with_dependencies,
        })
    }

    /// The library file for the platform this code runs on, relative to the bundle directory.
    ///
    /// # Errors
    ///
    /// [`ManifestError::NoLibraryForPlatform`]; `origin` is the manifest path it names.
    pub fn library_for_this_platform(&self, origin: &Path) -> Result<&Path, ManifestError> {
        let (platform, file) = if cfg!(target_os = "macos") {
            ("macos", self.library.macos.as_deref())
        } else {
            ("linux", self.library.linux.as_deref())
        };
        file.ok_or_else(|| ManifestError::NoLibraryForPlatform {
            path: origin.to_owned(),
            platform,
        })
    }

    /// The manifest as text this module parses back to an equal manifest.
    pub fn to_toml(&self) -> String {
        let quote = |s: &str| {
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\t' => out.push_str("\\t"),
                    '\r' => out.push_str("\\r"),
                    c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        };
        let list = |items: Vec<String>| {
            let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
            format!("[{}]", quoted.join(", "))
        };
        let mut out = String::new();
        out.push_str(&format!("name = {}\n", quote(&self.name)));
        out.push_str(&format!("version = {}\n", quote(&self.version.to_string())));
        out.push_str(&format!(
            "provides = {}\n",
            list(self.provides.iter().map(ToString::to_string).collect())
        ));
        out.push_str(&format!("depends = {}\n", list(self.depends.clone())));
        out.push_str(&format!(
            "requires = {}\n",
            list(self.requires.iter().map(ToString::to_string).collect())
        ));
        out.push_str(&format!(
            "reload_with_dependencies = {}\n",
            self.reload_with_dependencies
        ));
        if self.library.linux.is_some() || self.library.macos.is_some() {
            out.push_str("\n[library]\n");
            for (key, file) in [
                ("linux", &self.library.linux),
                ("macos", &self.library.macos),
            ] {
                if let Some(file) = file {
                    out.push_str(&format!("{key} = {}\n", quote(&file.to_string_lossy())));
                }
            }
        }
        out
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn parse_u32(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// `major.minor.patch`.
pub(crate) fn parse_version(s: &str) -> Option<Version> {
    let mut parts = s.split('.');
    let major = parse_u32(parts.next()?)?;
    let minor = parse_u32(parts.next()?)?;
    let patch = parse_u32(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }
    Some(Version::new(major, minor, patch))
}

/// `name@major.minor`.
fn parse_provided(s: &str) -> Option<ProvidedContract> {
    let (name, version) = s.rsplit_once('@')?;
    let (major, minor) = version.split_once('.')?;
    if name.is_empty()
        || name.len() > crate::abi::MAX_NAME_LEN
        || name.chars().any(char::is_control)
    {
        return None;
    }
    Some(ProvidedContract {
        name: name.to_owned(),
        major: parse_u32(major)?,
        minor: parse_u32(minor)?,
    })
}

// ─── The TOML subset ─────────────────────────────────────────────────────────────────────────

/// A syntax error: line and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub(crate) line: usize,
    pub(crate) message: String,
}

/// A value of the subset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Str(String),
    Bool(bool),
    Array(Vec<String>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Bool(_) => "a boolean",
            Value::Array(_) => "an array",
        }
    }

    fn wrong(&self, line: usize, key: &str, origin: &Path, expected: &str) -> ManifestError {
        ManifestError::InvalidValue {
            path: origin.to_owned(),
            line,
            key: key.to_owned(),
            message: format!("expected {expected}, found {}", self.kind()),
        }
    }

    fn string(self, line: usize, key: &str, origin: &Path) -> Result<String, ManifestError> {
        match self {
            Value::Str(s) => Ok(s),
            other => Err(other.wrong(line, key, origin, "a string")),
        }
    }

    fn strings(self, line: usize, key: &str, origin: &Path) -> Result<Vec<String>, ManifestError> {
        match self {
            Value::Array(items) => Ok(items),
            other => Err(other.wrong(line, key, origin, "an array of strings")),
        }
    }

    fn boolean(self, line: usize, key: &str, origin: &Path) -> Result<bool, ManifestError> {
        match self {
            Value::Bool(b) => Ok(b),
            other => Err(other.wrong(line, key, origin, "a boolean")),
        }
    }
}

/// One `key = value` with its table and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DocEntry {
    pub(crate) table: String,
    pub(crate) key: String,
    pub(crate) line: usize,
    pub(crate) value: Value,
}

struct Cursor<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: usize,
}

impl Cursor<'_> {
    fn peek(&mut self) -> Option<char> {
        self.chars.peek().copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next();
        if c == Some('\n') {
            self.line += 1;
        }
        c
    }

    fn error<T>(&self, message: impl Into<String>) -> Result<T, SyntaxError> {
        Err(SyntaxError {
            line: self.line,
            message: message.into(),
        })
    }

    /// Skips spaces and tabs (not newlines).
    fn skip_blank(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.bump();
        }
    }

    /// Skips a comment to the end of the line (not the newline).
    fn skip_comment(&mut self) {
        if self.peek() == Some('#') {
            while !matches!(self.peek(), None | Some('\n')) {
                self.bump();
            }
        }
    }

    /// Skips blanks, comments and newlines.
    fn skip_space(&mut self) {
        loop {
            self.skip_blank();
            self.skip_comment();
            match self.peek() {
                Some('\n') => {
                    self.bump();
                }
                Some('\r') => {
                    self.bump();
                    if self.peek() != Some('\n') {
                        return;
                    }
                }
                _ => return,
            }
        }
    }

    /// After a value or header: blanks, an optional comment, then a newline or the end.
    fn end_of_line(&mut self) -> Result<(), SyntaxError> {
        self.skip_blank();
        self.skip_comment();
        match self.peek() {
            None => Ok(()),
            Some('\n') => {
                self.bump();
                Ok(())
            }
            Some('\r') => {
                self.bump();
                if self.bump() == Some('\n') {
                    Ok(())
                } else {
                    self.error("a carriage return must be followed by a newline")
                }
            }
            Some(c) => self.error(format!("unexpected {c:?} after the value")),
        }
    }

    fn key(&mut self) -> Result<String, SyntaxError> {
        match self.peek() {
            Some('"') => self.basic_string(),
            Some('\'') => self.literal_string(),
            _ => {
                let mut key = String::new();
                while let Some(c) = self.peek() {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        key.push(c);
                        self.bump();
                    } else {
                        break;
                    }
                }
                if key.is_empty() {
                    return match self.peek() {
                        Some(c) => self.error(format!("expected a key, found {c:?}")),
                        None => self.error("expected a key, found the end"),
                    };
                }
                Ok(key)
            }
        }
    }

    fn basic_string(&mut self) -> Result<String, SyntaxError> {
        self.bump(); // the opening quote
        if self.peek() == Some('"') {
            self.bump();
            if self.peek() == Some('"') {
                return self.error("multi-line strings are not supported");
            }
            return Ok(String::new());
        }
        let mut out = String::new();
        loop {
            // Peek first: an unterminated string is reported on its own line.
            if matches!(self.peek(), None | Some('\n')) {
                return self.error("unterminated string");
            }
            match self.bump() {
                None | Some('\n') => return self.error("unterminated string"),
                Some('"') => return Ok(out),
                Some('\\') => match self.bump() {
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some('b') => out.push('\u{8}'),
                    Some('f') => out.push('\u{c}'),
                    Some('u') => out.push(self.unicode_escape(4)?),
                    Some('U') => out.push(self.unicode_escape(8)?),
                    Some(c) => return self.error(format!("unknown escape \\{c}")),
                    None => return self.error("unterminated string"),
                },
                Some(c) if c.is_control() && c != '\t' => {
                    return self.error("control character in a string");
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn unicode_escape(&mut self, digits: usize) -> Result<char, SyntaxError> {
        let mut value: u32 = 0;
        for _ in 0..digits {
            let Some(d) = self.bump().and_then(|c| c.to_digit(16)) else {
                return self.error("bad unicode escape");
            };
            value = value.saturating_mul(16).saturating_add(d);
        }
        match char::from_u32(value) {
            Some(c) => Ok(c),
            None => self.error("unicode escape is not a scalar value"),
        }
    }

    fn literal_string(&mut self) -> Result<String, SyntaxError> {
        self.bump(); // the opening quote
        let mut out = String::new();
        loop {
            if matches!(self.peek(), None | Some('\n')) {
                return self.error("unterminated string");
            }
            match self.bump() {
                None | Some('\n') => return self.error("unterminated string"),
                Some('\'') => {
                    if out.is_empty() && self.peek() == Some('\'') {
                        return self.error("multi-line strings are not supported");
                    }
                    return Ok(out);
                }
                Some(c) if c.is_control() && c != '\t' => {
                    return self.error("control character in a string");
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        match self.peek() {
            Some('"') => self.basic_string(),
            Some('\'') => self.literal_string(),
            Some(c) => self.error(format!("expected a string, found {c:?}")),
            None => self.error("expected a string, found the end"),
        }
    }

    fn value(&mut self) -> Result<Value, SyntaxError> {
        match self.peek() {
            Some('"' | '\'') => self.string().map(Value::Str),
            Some('[') => {
                self.bump();
                let mut items = Vec::new();
                loop {
                    self.skip_space();
                    if self.peek() == Some(']') {
                        self.bump();
                        return Ok(Value::Array(items));
                    }
                    items.push(self.string()?);
                    self.skip_space();
                    match self.bump() {
                        Some(',') => {}
                        Some(']') => return Ok(Value::Array(items)),
                        Some(c) => return self.error(format!("expected ',' or ']', found {c:?}")),
                        None => return self.error("unterminated array"),
                    }
                }
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let mut word = String::new();
                while let Some(c) = self.peek().filter(char::is_ascii_alphanumeric) {
                    word.push(c);
                    self.bump();
                }
                match word.as_str() {
                    "true" => Ok(Value::Bool(true)),
                    "false" => Ok(Value::Bool(false)),
                    _ => self.error(format!("unsupported value {word:?}")),
                }
            }
            Some('{') => self.error("inline tables are not supported"),
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' => {
                self.error("numbers are not supported: quote the value")
            }
            Some(c) => self.error(format!("unexpected {c:?}")),
            None => self.error("expected a value, found the end"),
        }
    }
}

/// Parses the subset into its `key = value` entries, in order.
pub(crate) fn parse_document(text: &str) -> Result<Vec<DocEntry>, SyntaxError> {
    let mut cursor = Cursor {
        chars: text.chars().peekable(),
        line: 1,
    };
    let mut entries = Vec::new();
    let mut table = String::new();
    let mut tables_seen = HashSet::new();
    let mut keys_seen: HashSet<(String, String)> = HashSet::new();
    loop {
        cursor.skip_space();
        match cursor.peek() {
            None => return Ok(entries),
            Some('[') => {
                cursor.bump();
                if cursor.peek() == Some('[') {
                    return cursor.error("arrays of tables are not supported");
                }
                cursor.skip_blank();
                let name = cursor.key()?;
                cursor.skip_blank();
                match cursor.bump() {
                    Some(']') => {}
                    Some('.') => return cursor.error("dotted table names are not supported"),
                    _ => return cursor.error("expected ']' after the table name"),
                }
                if !tables_seen.insert(name.clone()) {
                    return cursor.error(format!("table [{name}] is defined twice"));
                }
                table = name;
                cursor.end_of_line()?;
            }
            Some(_) => {
                let line = cursor.line;
                let key = cursor.key()?;
                cursor.skip_blank();
                match cursor.bump() {
                    Some('=') => {}
                    Some('.') => return cursor.error("dotted keys are not supported"),
                    _ => return cursor.error(format!("expected '=' after key {key:?}")),
                }
                cursor.skip_blank();
                let value = cursor.value()?;
                cursor.end_of_line()?;
                if !keys_seen.insert((table.clone(), key.clone())) {
                    return Err(SyntaxError {
                        line,
                        message: format!("key {key:?} is defined twice"),
                    });
                }
                entries.push(DocEntry {
                    table: table.clone(),
                    key,
                    line,
                    value,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
# A plugin bundle.
name = "greeter"            # trailing comment
version = "1.4.0"
provides = [
    "greeter@1.4",  # one per line
    'stats@2.0',
]
depends = ["base-services"]
requires = ["clock@1.2"]
reload_with_dependencies = true

[library]
linux = "libgreeter.so"
"macos" = 'libgreeter.dylib'
"#;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new("/b/manifest.toml"))
    }

    #[test]
    fn the_documented_example_parses() {
        let m = parse(EXAMPLE).expect("example");
        assert_eq!(m.name, "greeter");
        assert_eq!(m.version, Version::new(1, 4, 0));
        assert_eq!(
            m.provides,
            vec![
                ProvidedContract {
                    name: "greeter".into(),
                    major: 1,
                    minor: 4
                },
                ProvidedContract {
                    name: "stats".into(),
                    major: 2,
                    minor: 0
                },
            ]
        );
        assert_eq!(m.depends, vec!["base-services".to_string()]);
        assert_eq!(
            m.requires,
            vec![RequiredContract {
                name: "clock".into(),
                major: 1,
                minor: 2
            }]
        );
        assert!(m.reload_with_dependencies);
        assert_eq!(m.library.linux.as_deref(), Some(Path::new("libgreeter.so")));
        assert_eq!(
            m.library.macos.as_deref(),
            Some(Path::new("libgreeter.dylib"))
        );
        assert_eq!(parse(&m.to_toml()).expect("round trip"), m);
    }

    fn syntax_line(text: &str) -> usize {
        match parse(text) {
            Err(ManifestError::Syntax { line, .. }) => line,
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn syntax_errors_carry_their_line() {
        assert_eq!(syntax_line("name = \"a\"\nversion = 1\n"), 2);
        assert_eq!(syntax_line("name = \"a\"\n\n[[x]]\n"), 3);
        assert_eq!(syntax_line("name = \"unterminated\n"), 1);
        assert_eq!(syntax_line("a.b = \"x\"\n"), 1);
        assert_eq!(syntax_line("x = { a = 1 }\n"), 1);
        assert_eq!(syntax_line("name = \"a\" name2\n"), 1);
        assert_eq!(syntax_line("name = \"a\"\nname = \"b\"\n"), 2);
        assert_eq!(syntax_line("p = [\n\"a\",\n\"b\" \"c\"]\n"), 3);
        assert_eq!(syntax_line("s = \"\\q\"\n"), 1);
        assert_eq!(syntax_line("s = \"\"\"multi\"\"\"\n"), 1);
    }

    #[test]
    fn validation_errors_name_the_key() {
        let base = "name = \"b\"\nversion = \"1.0.0\"\n";
        match parse("version = \"1.0.0\"\n") {
            Err(ManifestError::MissingKey { key: "name", .. }) => {}
            other => panic!("{other:?}"),
        }
        match parse(&format!("{base}colour = \"red\"\n")) {
            Err(ManifestError::UnknownKey { line: 3, key, .. }) => assert_eq!(key, "colour"),
            other => panic!("{other:?}"),
        }
        for bad in [
            "name = \"b c\"\nversion = \"1.0.0\"\n",
            "name = \"b\"\nversion = \"1.0\"\n",
            "name = \"b\"\nversion = \"01.0.0\"\n",
            "name = \"b\"\nversion = true\n",
            &format!("{base}provides = [\"nomajor\"]\n"),
            &format!("{base}provides = [\"a@1.0\", \"a@1.2\"]\n"),
            &format!("{base}provides = \"a@1.0\"\n"),
            &format!("{base}[library]\nlinux = \"../escape.so\"\n"),
            &format!("{base}[library]\nlinux = \"/abs.so\"\n"),
        ] {
            match parse(bad) {
                Err(ManifestError::InvalidValue { .. }) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let err = parse("name = \"b\"\nversion = \"1.0\"\n").expect_err("bad version");
        assert_eq!(
            err.to_string(),
            "/b/manifest.toml:2: `version`: \"1.0\" is not major.minor.patch"
        );
    }

    #[test]
    fn majors_of_one_contract_may_both_be_provided() {
        let m = parse("name = \"b\"\nversion = \"1.0.0\"\nprovides = [\"a@1.0\", \"a@2.0\"]\n")
            .expect("two majors");
        assert_eq!(m.provides.len(), 2);
        assert_ne!(m.provides[0].id(), m.provides[1].id());
    }

    #[test]
    fn crlf_line_endings_are_accepted() {
        let m = parse("name = \"b\"\r\nversion = \"1.0.0\"\r\n").expect("crlf");
        assert_eq!(m.name, "b");
    }
}
