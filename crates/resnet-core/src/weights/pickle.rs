//! A restricted unpickler for the `data.pkl` that `torch.save` writes (pickle protocols 2-5).
//!
//! It never executes anything: it is a small stack machine over a closed set of values, and
//! the only callables it knows are an allowlist of globals a state_dict needs (`OrderedDict`,
//! torch's tensor/parameter rebuilders and typed-storage classes). Any other global — such as
//! `os system` or `builtins eval` — stops the load with [`PickleError::Refused`].
//!
//! Hostile input cannot make it panic, recurse or allocate beyond a small multiple of the
//! input's size: every read and index is checked, and containers live in a flat arena
//! ([`Pickle`]) so even deeply nested or self-referencing pickles are plain data.

use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

pub use super::dtype::ElementType;

mod machine;

/// A storage named by a persistent id: the zip entry `data/<key>` holding `numel` elements.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    pub key: String,
    pub dtype: ElementType,
    pub numel: usize,
}

/// A tensor as `torch._utils._rebuild_tensor_v2` describes it: a strided view of a storage.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// The allowlisted globals, the only callables this unpickler knows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    Storage(ElementType),
}

/// Index of a container in a [`Pickle`]'s arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObjectId(usize);

/// One pickled value. Containers are [`ObjectId`]s into the arena, so values stay flat.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Global(Global),
    Object(ObjectId),
}

/// Containers and torch objects, stored in the arena.
#[derive(Debug)]
pub enum Object {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Dict),
    Storage(StorageRef),
    Tensor(TensorRef),
}

/// A Python dict (insertion-ordered, like `dict` and `OrderedDict`).
#[derive(Debug, Default)]
pub struct Dict {
    entries: Vec<(Value, Value)>,
    index: HashMap<DictKey, usize>,
}

/// The hashable keys we deduplicate on; other keys are kept in order without dedup.
#[derive(Debug, PartialEq, Eq, Hash)]
enum DictKey {
    None,
    Int(i64),
    Str(Rc<str>),
}

impl Dict {
    pub fn entries(&self) -> &[(Value, Value)] {
        &self.entries
    }

    fn insert(&mut self, key: Value, value: Value) {
        let hashed = match &key {
            Value::None => Some(DictKey::None),
            Value::Bool(b) => Some(DictKey::Int(i64::from(*b))),
            Value::Int(i) => Some(DictKey::Int(*i)),
            Value::Str(s) => Some(DictKey::Str(s.clone())),
            _ => None,
        };
        if let Some(h) = hashed {
            if let Some(&i) = self.index.get(&h) {
                if let Some(entry) = self.entries.get_mut(i) {
                    entry.1 = value;
                    return;
                }
            }
            self.index.insert(h, self.entries.len());
        }
        self.entries.push((key, value));
    }

    /// The value under a string key.
    pub fn get_str(&self, key: &str) -> Option<&Value> {
        let i = *self.index.get(&DictKey::Str(Rc::from(key)))?;
        self.entries.get(i).map(|(_, v)| v)
    }
}

/// Why a pickle was not loaded.
#[derive(Debug, Clone, PartialEq)]
pub enum PickleError {
    /// The pickle references a global outside the allowlist (`module name`, as pickle spells it).
    Refused { global: String },
    /// The bytes are not a pickle this unpickler understands.
    Malformed { offset: usize, reason: String },
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PickleError::Refused { global } => write!(f, "the pickle calls `{global}`"),
            PickleError::Malformed { offset, reason } => {
                write!(f, "malformed pickle at byte {offset}: {reason}")
            }
        }
    }
}

impl std::error::Error for PickleError {}

/// An unpickled object graph: the arena of containers and the root value.
#[derive(Debug)]
pub struct Pickle {
    objects: Vec<Object>,
    root: Value,
}

impl Pickle {
    pub fn root(&self) -> &Value {
        &self.root
    }

    pub fn object(&self, value: &Value) -> Option<&Object> {
        match value {
            Value::Object(ObjectId(i)) => self.objects.get(*i),
            _ => None,
        }
    }

    pub fn as_dict(&self, value: &Value) -> Option<&Dict> {
        match self.object(value) {
            Some(Object::Dict(d)) => Some(d),
            _ => None,
        }
    }

    pub fn as_tensor(&self, value: &Value) -> Option<&TensorRef> {
        match self.object(value) {
            Some(Object::Tensor(t)) => Some(t),
            _ => None,
        }
    }

    /// A short description of a value's type, for error messages.
    pub fn type_name(&self, value: &Value) -> &'static str {
        match value {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Global(_) => "class or function",
            Value::Object(_) => match self.object(value) {
                Some(Object::Tuple(_)) => "tuple",
                Some(Object::List(_)) => "list",
                Some(Object::Dict(_)) => "dict",
                Some(Object::Storage(_)) => "storage",
                Some(Object::Tensor(_)) => "tensor",
                None => "dangling object",
            },
        }
    }
}

/// Runs the restricted unpickler over `data` (the whole pickle, ending in STOP).
pub fn unpickle(data: &[u8]) -> Result<Pickle, PickleError> {
    let (objects, root) = machine::run(data)?;
    Ok(Pickle { objects, root })
}

/// Checks a global against the allowlist.
fn resolve_global(module: &str, name: &str) -> Result<Global, PickleError> {
    let global = match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => Some(Global::RebuildParameterWithState),
        ("torch", class) => ElementType::from_torch_storage(class).map(Global::Storage),
        _ => None,
    };
    global.ok_or_else(|| PickleError::Refused { global: format!("{} {}", printable(module), printable(name)) })
}

/// Escapes control characters and shortens a file-controlled name for an error message.
fn printable(s: &str) -> String {
    const MAX_CHARS: usize = 120;
    let mut out: String = s.chars().take(MAX_CHARS).flat_map(char::escape_debug).collect();
    if s.chars().nth(MAX_CHARS).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_os_system_via_global() {
        let pickle = b"\x80\x02cos\nsystem\nq\x00X\x0a\x00\x00\x00echo pwned\x85R.";
        let err = unpickle(pickle).unwrap_err();
        assert_eq!(err, PickleError::Refused { global: "os system".into() });
    }

    #[test]
    fn refuses_builtins_eval_via_stack_global() {
        let pickle = b"\x80\x04\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94\x8c\x041+1\x85R.";
        let err = unpickle(pickle).unwrap_err();
        assert_eq!(err, PickleError::Refused { global: "builtins eval".into() });
    }

    #[test]
    fn refused_global_names_are_escaped_and_shortened() {
        let mut pickle = b"\x80\x02cevil\x1b[2J".to_vec();
        pickle.extend(vec![b'x'; 1000]);
        pickle.extend(b"\nname\n.");
        let PickleError::Refused { global } = unpickle(&pickle).unwrap_err() else {
            panic!("expected a refusal");
        };
        assert!(global.starts_with("evil\\u{1b}[2J"), "{global}");
        assert!(global.chars().count() < 200, "{global}");
    }

    #[test]
    fn reads_plain_values_and_ordered_dict() {
        // OrderedDict([('a', 1), ('b', [2.5, None, True])]), protocol 2, written by hand.
        let pickle = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00aK\x01\
X\x01\x00\x00\x00b]q\x02(G@\x04\x00\x00\x00\x00\x00\x00N\x88eu.";
        let p = unpickle(pickle).unwrap();
        let dict = p.as_dict(p.root()).unwrap();
        assert_eq!(dict.get_str("a"), Some(&Value::Int(1)));
        let list = dict.get_str("b").unwrap();
        match p.object(list) {
            Some(Object::List(items)) => {
                assert_eq!(items, &[Value::Float(2.5), Value::None, Value::Bool(true)])
            }
            other => panic!("expected a list, got {other:?}"),
        }
    }

    #[test]
    fn long1_handles_sign_and_width() {
        // LONG1 with 5 bytes: 2**32 and -2**32.
        let p = unpickle(b"\x80\x02\x8a\x05\x00\x00\x00\x00\x01.").unwrap();
        assert_eq!(p.root(), &Value::Int(1 << 32));
        let p = unpickle(b"\x80\x02\x8a\x05\x00\x00\x00\x00\xff.").unwrap();
        assert_eq!(p.root(), &Value::Int(-(1 << 32)));
        assert!(unpickle(b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.").is_err());
    }

    #[test]
    fn hostile_lengths_and_indices_are_errors() {
        let cases: &[&[u8]] = &[
            b"",
            b"\x80\x02",
            b"\x80\x02X\xff\xff\xff\xff",
            b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff",
            b"\x80\x02h\x07.",
            b"\x80\x02j\xff\xff\xff\xff.",
            b"\x80\x02u.",
            b"\x80\x02(u.",
            b"\x80\x02K\x01K\x02s.",
            b"\x80\x02]K\x01K\x02s.",
            b"\x80\x02}K\x01a.",
            b"\x80\x02)K\x01R.",
            b"\x80\x02\x85.",
            b"\x80\x02\x93.",
            b"\x80\x02cos\nsys",
            b"\x80\x09.",
            b"\x80\x02\xff.",
            b"\x80\x02(\x8a\x05\x00\x00\x00\x00\x01t\x85Q.",
            b"\x80\x02(0K\x01t.",
        ];
        for case in cases {
            assert!(unpickle(case).is_err(), "{case:?} should fail");
        }
    }

    #[test]
    fn deep_nesting_and_self_reference_are_flat_data() {
        // A million nested lists: a recursive Value type would overflow the stack on drop.
        let mut pickle = b"\x80\x02".to_vec();
        pickle.extend(vec![b']'; 1_000_000]);
        pickle.extend(vec![b'a'; 999_999]);
        pickle.push(b'.');
        assert!(unpickle(&pickle).is_ok());
        // A list that contains itself.
        let p = unpickle(b"\x80\x02]q\x00h\x00a.").unwrap();
        assert_eq!(p.type_name(p.root()), "list");
    }
}
