//! The unpickler's stack machine: one opcode at a time over a byte slice, with a value stack,
//! a mark stack, a memo and the object arena. Only opcodes `torch.save` emits are known.

use std::collections::HashMap;
use std::rc::Rc;

use super::{resolve_global, Dict, Global, Object, ObjectId, PickleError, StorageRef, TensorRef, Value};

/// Runs `data` to its STOP opcode, returning the arena and the root value.
pub(super) fn run(data: &[u8]) -> Result<(Vec<Object>, Value), PickleError> {
    let mut machine = Machine {
        data,
        pos: 0,
        op_start: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        objects: Vec::new(),
    };
    let root = machine.run()?;
    Ok((machine.objects, root))
}

mod op {
    pub const PROTO: u8 = 0x80;
    pub const FRAME: u8 = 0x95;
    pub const STOP: u8 = b'.';
    pub const GLOBAL: u8 = b'c';
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const MEMOIZE: u8 = 0x94;
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const MARK: u8 = b'(';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_LIST: u8 = b']';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const LIST: u8 = b'l';
    pub const DICT: u8 = b'd';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const BINFLOAT: u8 = b'G';
    pub const BINUNICODE: u8 = b'X';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const BINBYTES8: u8 = 0x8e;
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const REDUCE: u8 = b'R';
    pub const NEWOBJ: u8 = 0x81;
    pub const BUILD: u8 = b'b';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const BINPERSID: u8 = b'Q';
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    op_start: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    objects: Vec<Object>,
}

impl<'a> Machine<'a> {
    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            self.op_start = self.pos;
            let opcode = match self.data.get(self.pos) {
                Some(&b) => b,
                None => return Err(self.error("the pickle ends before its STOP opcode (truncated?)")),
            };
            self.pos += 1;
            if opcode == op::STOP {
                return self.pop();
            }
            self.step(opcode)?;
        }
    }

    fn step(&mut self, opcode: u8) -> Result<(), PickleError> {
        match opcode {
            op::PROTO => {
                let protocol = self.read_u8()?;
                if !(2..=5).contains(&protocol) {
                    return Err(self.error(format!("unsupported pickle protocol {protocol}")));
                }
            }
            op::FRAME => {
                self.read_n(8)?; // framing is only a buffering hint
            }
            op::GLOBAL => {
                let module = self.read_line()?;
                let name = self.read_line()?;
                self.push(Value::Global(resolve_global(&module, &name)?));
            }
            op::STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => self.push(Value::Global(resolve_global(&m, &n)?)),
                    _ => return Err(self.error("STACK_GLOBAL needs two strings")),
                }
            }
            op::BINPUT => {
                let i = self.read_u8()?;
                self.memoize(u32::from(i))?;
            }
            op::LONG_BINPUT => {
                let i = self.read_u32()?;
                self.memoize(i)?;
            }
            op::MEMOIZE => {
                let i = u32::try_from(self.memo.len()).map_err(|_| self.error("too many memoized values"))?;
                self.memoize(i)?;
            }
            op::BINGET => {
                let i = self.read_u8()?;
                self.memo_get(u32::from(i))?;
            }
            op::LONG_BINGET => {
                let i = self.read_u32()?;
                self.memo_get(i)?;
            }
            op::MARK => self.marks.push(self.stack.len()),
            op::POP => {
                if self.marks.last() == Some(&self.stack.len()) {
                    self.marks.pop();
                } else {
                    self.pop()?;
                }
            }
            op::POP_MARK => {
                self.pop_mark()?;
            }
            op::DUP => {
                let top = self.top()?.clone();
                self.push(top);
            }
            op::EMPTY_DICT => self.new_object(Object::Dict(Dict::default())),
            op::EMPTY_LIST => self.new_object(Object::List(Vec::new())),
            op::EMPTY_TUPLE => self.new_object(Object::Tuple(Vec::new())),
            op::TUPLE => {
                let items = self.pop_mark()?;
                self.new_object(Object::Tuple(items));
            }
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let items = self.pop_n(usize::from(opcode - op::TUPLE1 + 1))?;
                self.new_object(Object::Tuple(items));
            }
            op::LIST => {
                let items = self.pop_mark()?;
                self.new_object(Object::List(items));
            }
            op::DICT => {
                let items = self.pop_mark()?;
                let mut dict = Dict::default();
                for (k, v) in self.pairs(items)? {
                    dict.insert(k, v);
                }
                self.new_object(Object::Dict(dict));
            }
            op::BININT => {
                let b = self.read_array::<4>()?;
                self.push(Value::Int(i32::from_le_bytes(b).into()));
            }
            op::BININT1 => {
                let b = self.read_u8()?;
                self.push(Value::Int(b.into()));
            }
            op::BININT2 => {
                let b = self.read_array::<2>()?;
                self.push(Value::Int(u16::from_le_bytes(b).into()));
            }
            op::LONG1 => {
                let n = usize::from(self.read_u8()?);
                self.read_long(n)?;
            }
            op::LONG4 => {
                let n = self.read_u32()?;
                self.read_long(usize::try_from(n).unwrap_or(usize::MAX))?;
            }
            op::BINFLOAT => {
                let b = self.read_array::<8>()?;
                self.push(Value::Float(f64::from_be_bytes(b)));
            }
            op::BINUNICODE | op::SHORT_BINUNICODE | op::BINUNICODE8 => {
                let n = self.read_len(opcode, op::SHORT_BINUNICODE, op::BINUNICODE)?;
                let bytes = self.read_n(n)?;
                let s = std::str::from_utf8(bytes).map_err(|_| self.error("a string is not valid UTF-8"))?;
                self.push(Value::Str(Rc::from(s)));
            }
            op::BINBYTES | op::SHORT_BINBYTES | op::BINBYTES8 => {
                let n = self.read_len(opcode, op::SHORT_BINBYTES, op::BINBYTES)?;
                let bytes = self.read_n(n)?;
                self.push(Value::Bytes(Rc::from(bytes)));
            }
            op::NONE => self.push(Value::None),
            op::NEWTRUE => self.push(Value::Bool(true)),
            op::NEWFALSE => self.push(Value::Bool(false)),
            op::REDUCE | op::NEWOBJ => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let result = self.call(&callable, &args)?;
                self.push(result);
            }
            op::BUILD => {
                self.pop()?; // the state: OrderedDict's `_metadata`, a parameter's attributes
                match self.object_ref(self.top()?)? {
                    Object::Dict(_) | Object::Tensor(_) => {}
                    _ => return Err(self.error("BUILD on an object that takes no state")),
                }
            }
            op::SETITEM => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.with_top_dict(|d| d.insert(key, value))?;
            }
            op::SETITEMS => {
                let items = self.pop_mark()?;
                let pairs = self.pairs(items)?;
                self.with_top_dict(|d| pairs.into_iter().for_each(|(k, v)| d.insert(k, v)))?;
            }
            op::APPEND => {
                let value = self.pop()?;
                self.with_top_list(|l| l.push(value))?;
            }
            op::APPENDS => {
                let mut items = self.pop_mark()?;
                self.with_top_list(|l| l.append(&mut items))?;
            }
            op::BINPERSID => {
                let pid = self.pop()?;
                let storage = self.persistent_load(&pid)?;
                self.new_object(Object::Storage(storage));
            }
            other => {
                return Err(self.error(format!("unsupported pickle opcode 0x{other:02x} (not used by torch.save)")))
            }
        }
        Ok(())
    }

    /// Calls an allowlisted global (REDUCE / NEWOBJ).
    fn call(&mut self, callable: &Value, args: &Value) -> Result<Value, PickleError> {
        let Value::Global(global) = callable else {
            return Err(self.error("REDUCE on something that is not an allowed global"));
        };
        let args = match self.object_ref(args)? {
            Object::Tuple(items) => items.clone(),
            _ => return Err(self.error("REDUCE arguments are not a tuple")),
        };
        match global {
            Global::OrderedDict if args.is_empty() => Ok(self.alloc(Object::Dict(Dict::default()))),
            Global::RebuildTensorV2 if (6..=7).contains(&args.len()) => {
                let storage = match self.object_ref(&args[0])? {
                    Object::Storage(s) => s.clone(),
                    _ => return Err(self.error("_rebuild_tensor_v2 without a storage")),
                };
                let offset = self.to_usize(&args[1])?;
                let shape = self.usize_tuple(&args[2])?;
                let stride = self.usize_tuple(&args[3])?;
                if shape.len() != stride.len() {
                    return Err(self.error("a tensor's size and stride differ in length"));
                }
                let tensor = TensorRef { storage, offset, shape, stride };
                Ok(self.alloc(Object::Tensor(tensor)))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState if (3..=4).contains(&args.len()) => {
                match self.object_ref(&args[0])? {
                    Object::Tensor(_) => Ok(args[0].clone()),
                    _ => Err(self.error("_rebuild_parameter without a tensor")),
                }
            }
            _ => Err(self.error(format!("unexpected call of {global:?} with {} arguments", args.len()))),
        }
    }

    /// Resolves torch's persistent id `('storage', StorageClass, key, location, numel)`.
    fn persistent_load(&self, pid: &Value) -> Result<StorageRef, PickleError> {
        let Object::Tuple(items) = self.object_ref(pid)? else {
            return Err(self.error("a persistent id is not a tuple"));
        };
        match items.as_slice() {
            [Value::Str(kind), Value::Global(Global::Storage(dtype)), key, _location, numel]
                if &**kind == "storage" =>
            {
                let key = match key {
                    Value::Str(s) => s.to_string(),
                    Value::Int(i) => i.to_string(),
                    _ => return Err(self.error("a storage key is neither str nor int")),
                };
                let numel = self.to_usize(numel)?;
                Ok(StorageRef { key, dtype: *dtype, numel })
            }
            _ => Err(self.error("a persistent id is not torch's ('storage', ...) form")),
        }
    }

    /// Dict items from a flat `key, value, key, value, ...` run of the stack.
    fn pairs(&self, items: Vec<Value>) -> Result<Vec<(Value, Value)>, PickleError> {
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let Some(key) = it.next() {
            let value = it.next();
            let value = value.ok_or_else(|| self.error("dict items come in an odd number"))?;
            pairs.push((key, value));
        }
        Ok(pairs)
    }

    fn to_usize(&self, value: &Value) -> Result<usize, PickleError> {
        match value {
            Value::Int(i) => usize::try_from(*i).map_err(|_| self.error(format!("negative size {i}"))),
            _ => Err(self.error("expected an integer")),
        }
    }

    fn usize_tuple(&self, value: &Value) -> Result<Vec<usize>, PickleError> {
        match self.object_ref(value)? {
            Object::Tuple(items) => items.iter().map(|v| self.to_usize(v)).collect(),
            _ => Err(self.error("expected a tuple of integers")),
        }
    }

    // --- stack, memo and arena ---

    fn push(&mut self, value: Value) {
        self.stack.push(value);
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.error("an opcode pops past a MARK"));
        }
        self.stack.pop().ok_or_else(|| self.error("pop from an empty stack"))
    }

    fn top(&self) -> Result<&Value, PickleError> {
        self.stack.last().ok_or_else(|| self.error("the stack is empty"))
    }

    /// The top `n` values (TUPLE1/2/3), which must all lie above the last MARK.
    fn pop_n(&mut self, n: usize) -> Result<Vec<Value>, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        let start = self.stack.len().checked_sub(n).filter(|&s| s >= floor);
        let start = start.ok_or_else(|| self.error("a tuple opcode finds too few values"))?;
        Ok(self.stack.split_off(start))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let mark = self.marks.pop().ok_or_else(|| self.error("no MARK to pop to"))?;
        if mark > self.stack.len() {
            return Err(self.error("a MARK lies above the stack"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn memoize(&mut self, index: u32) -> Result<(), PickleError> {
        let top = self.top()?.clone();
        self.memo.insert(index, top);
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> Result<(), PickleError> {
        let value = self.memo.get(&index).cloned();
        let value = value.ok_or_else(|| self.error(format!("memo entry {index} is unset")))?;
        self.push(value);
        Ok(())
    }

    fn alloc(&mut self, object: Object) -> Value {
        let id = ObjectId(self.objects.len());
        self.objects.push(object);
        Value::Object(id)
    }

    fn new_object(&mut self, object: Object) {
        let value = self.alloc(object);
        self.push(value);
    }

    fn object_ref(&self, value: &Value) -> Result<&Object, PickleError> {
        match value {
            Value::Object(ObjectId(i)) => self.objects.get(*i),
            _ => None,
        }
        .ok_or_else(|| self.error("expected a container or torch object"))
    }

    fn top_object_mut(&mut self) -> Option<&mut Object> {
        match self.stack.last() {
            Some(Value::Object(ObjectId(i))) => self.objects.get_mut(*i),
            _ => None,
        }
    }

    fn with_top_dict(&mut self, f: impl FnOnce(&mut Dict)) -> Result<(), PickleError> {
        if let Some(Object::Dict(d)) = self.top_object_mut() {
            f(d);
            return Ok(());
        }
        Err(self.error("SETITEM(S) on something that is not a dict"))
    }

    fn with_top_list(&mut self, f: impl FnOnce(&mut Vec<Value>)) -> Result<(), PickleError> {
        if let Some(Object::List(l)) = self.top_object_mut() {
            f(l);
            return Ok(());
        }
        Err(self.error("APPEND(S) on something that is not a list"))
    }

    // --- reading operands ---

    fn error(&self, reason: impl Into<String>) -> PickleError {
        PickleError::Malformed { offset: self.op_start, reason: reason.into() }
    }

    fn read_n(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let data: &'a [u8] = self.data;
        let end = self.pos.checked_add(n);
        let Some(bytes) = end.and_then(|end| data.get(self.pos..end)) else {
            return Err(self.error(format!("an operand of {n} bytes runs past the end of the pickle (truncated?)")));
        };
        self.pos += n;
        Ok(bytes)
    }

    fn read_array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.read_n(N)?);
        Ok(a)
    }

    fn read_u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.read_array::<1>()?[0])
    }

    fn read_u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.read_array::<4>()?))
    }

    /// The length operand of a string/bytes opcode: 1, 4 or 8 bytes wide.
    fn read_len(&mut self, opcode: u8, short: u8, four: u8) -> Result<usize, PickleError> {
        let n = if opcode == short {
            u64::from(self.read_u8()?)
        } else if opcode == four {
            u64::from(self.read_u32()?)
        } else {
            u64::from_le_bytes(self.read_array::<8>()?)
        };
        // Oversized lengths fail in read_n; this only guards the conversion.
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// A newline-terminated ASCII operand (GLOBAL's module and name).
    fn read_line(&mut self) -> Result<String, PickleError> {
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        let Some(len) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.error("GLOBAL operand has no newline (truncated?)"));
        };
        let line = self.read_n(len + 1)?;
        Ok(String::from_utf8_lossy(&line[..len]).into_owned())
    }

    /// LONG1/LONG4: a little-endian two's-complement integer of `n` bytes, kept if it fits i64.
    fn read_long(&mut self, n: usize) -> Result<(), PickleError> {
        if n > 8 {
            return Err(self.error(format!("a {n}-byte integer is too large")));
        }
        let bytes = self.read_n(n)?;
        let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
        let mut a = [if negative { 0xff } else { 0 }; 8];
        a[..n].copy_from_slice(bytes);
        self.push(Value::Int(i64::from_le_bytes(a)));
        Ok(())
    }
}
