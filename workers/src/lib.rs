//! oprun's task kinds that live outside the library.
