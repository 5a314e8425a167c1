//! `.npy` reading with dtype and shape checks: a file of the wrong dtype or shape is a
//! [`Error::Format`] naming the file, what was expected and what was found.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use crate::error::{Error, Result};

/// An array read from a `.npy` file: C-order data and its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Array<T> {
    /// Elements in C order.
    pub data: Vec<T>,
    /// The shape.
    pub shape: Vec<usize>,
}

fn open(path: &Path) -> Result<npyz::NpyFile<BufReader<File>>> {
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.into(),
        source,
    })?;
    npyz::NpyFile::new(BufReader::new(file)).map_err(|e| Error::Format {
        path: path.into(),
        message: format!("not a .npy file: {e}"),
    })
}

fn read<T: npyz::Deserialize>(path: &Path, want: &[&str], what: &str) -> Result<Array<T>> {
    let npy = open(path)?;
    let format = |message: String| Error::Format {
        path: path.into(),
        message,
    };
    let dtype = npy.dtype();
    let descr = match &dtype {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => format!("{other:?}"),
    };
    if !want.contains(&descr.as_str()) {
        return Err(format(format!(
            "expected {what} ({}), found dtype {descr}",
            want.join(" or ")
        )));
    }
    if npy.order() != npyz::Order::C {
        return Err(format(
            "Fortran-order arrays are not supported; save with C order".into(),
        ));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&s| s as usize).collect();
    let data = npy
        .into_vec::<T>()
        .map_err(|e| format(format!("cannot read data: {e}")))?;
    Ok(Array { data, shape })
}

/// Reads a little-endian float32 array.
pub fn read_f32(path: impl AsRef<Path>) -> Result<Array<f32>> {
    read(path.as_ref(), &["<f4"], "float32")
}

/// Reads a little-endian int32 array.
pub fn read_i32(path: impl AsRef<Path>) -> Result<Array<i32>> {
    read(path.as_ref(), &["<i4"], "int32")
}

impl<T> Array<T> {
    /// Checks the shape: `None` entries match any size. Returns the array for chaining.
    pub fn expect_shape(self, path: impl AsRef<Path>, shape: &[Option<usize>]) -> Result<Self> {
        let ok = self.shape.len() == shape.len()
            && self
                .shape
                .iter()
                .zip(shape)
                .all(|(&s, w)| w.is_none_or(|w| w == s));
        if ok {
            return Ok(self);
        }
        let want: Vec<String> = shape
            .iter()
            .map(|w| w.map_or("*".into(), |w| w.to_string()))
            .collect();
        Err(Error::Format {
            path: path.as_ref().into(),
            message: format!(
                "expected shape [{}], found {:?}",
                want.join(", "),
                self.shape
            ),
        })
    }
}
