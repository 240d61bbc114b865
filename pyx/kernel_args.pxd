# The kernels' own check of the arrays they are handed, in C: a row kernel
# called for a (1, 768) LayerNorm spends more on acquiring typed memoryviews
# (~0.2 us each, several per call) than on the arithmetic, so the entry points
# take ndarrays and check dtype, rank, shape, layout and writability with
# numpy's C macros instead. A wrong array raises ValueError naming it, before
# anything is computed (the API's fast path relies on that: it falls back to
# its checked path, which names the argument to the user).

cimport numpy as cnp


cdef inline bint is_f32_c(object a, Py_ssize_t size):
    """a is a C-contiguous float32 ndarray of `size` elements (the prepared calls' quick
    test: they copy or refuse what fails it)."""
    if type(a) is not cnp.ndarray:
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>a
    return (cnp.PyArray_TYPE(arr) == cnp.NPY_FLOAT32 and cnp.PyArray_IS_C_CONTIGUOUS(arr)
            and cnp.PyArray_SIZE(arr) == size)


cdef inline cnp.ndarray checked(object a, int typenum, int ndim, bint writable, str name):
    """a as an ndarray of dtype `typenum` (native byte order, aligned), rank
    ndim, C-contiguous, writeable if asked; else ValueError naming it."""
    cdef cnp.ndarray arr
    if type(a) is not cnp.ndarray:
        raise ValueError(f"{name} must be a numpy.ndarray")
    arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != typenum or not cnp.PyArray_ISBEHAVED_RO(arr) \
            or not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{name} has the wrong dtype or layout")
    if cnp.PyArray_NDIM(arr) != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions")
    if writable and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{name} must be writeable")
    return arr


cdef inline void* array_ptr(object a, int typenum, Py_ssize_t d0, Py_ssize_t d1, bint writable,
                            str name) except NULL:
    """The data of `a`, checked (see checked) to have shape (d0,) when d1 < 0, else (d0, d1)."""
    cdef cnp.ndarray arr = checked(a, typenum, 1 if d1 < 0 else 2, writable, name)
    cdef cnp.npy_intp* dims = cnp.PyArray_DIMS(arr)
    if dims[0] != d0 or (d1 >= 0 and dims[1] != d1):
        raise ValueError(f"{name} must have shape ({d0},)" if d1 < 0 else f"{name} must have shape ({d0}, {d1})")
    return cnp.PyArray_DATA(arr)


cdef inline void* array3_ptr(object a, int typenum, Py_ssize_t d0, Py_ssize_t d1, Py_ssize_t d2,
                             bint writable, str name) except NULL:
    """array_ptr for shape (d0, d1, d2)."""
    cdef cnp.ndarray arr = checked(a, typenum, 3, writable, name)
    cdef cnp.npy_intp* dims = cnp.PyArray_DIMS(arr)
    if dims[0] != d0 or dims[1] != d1 or dims[2] != d2:
        raise ValueError(f"{name} must have shape ({d0}, {d1}, {d2})")
    return cnp.PyArray_DATA(arr)


cdef inline void* optional_ptr(object a, int typenum, Py_ssize_t d0, Py_ssize_t d1, bint writable,
                               str name) except? NULL:
    """array_ptr, or NULL for None."""
    if a is None:
        return NULL
    return array_ptr(a, typenum, d0, d1, writable, name)


cdef inline const void* param_vector(object a, int typenum, Py_ssize_t* length, str name) except? NULL:
    """A 1-D parameter of any length (written to length; 0 and NULL for None or an empty array)."""
    cdef cnp.ndarray arr
    length[0] = 0
    if a is None:
        return NULL
    arr = checked(a, typenum, 1, False, name)
    length[0] = cnp.PyArray_DIMS(arr)[0]
    return cnp.PyArray_DATA(arr) if length[0] else NULL


cdef inline int storage_type(object x, int ndim, int* param_type) except -1:
    """x's dtype number, checked to be one a statistics kernel stores: float32,
    float64 or uint16 (the words of float16/bfloat16); param_type gets the
    parameters' dtype number (float64 for float64 x, else float32)."""
    cdef int tn
    if type(x) is not cnp.ndarray or cnp.PyArray_NDIM(<cnp.ndarray>x) != ndim:
        raise ValueError(f"x must be a {ndim}-D numpy.ndarray")
    tn = cnp.PyArray_TYPE(<cnp.ndarray>x)
    if tn == cnp.NPY_FLOAT32 or tn == cnp.NPY_UINT16:
        param_type[0] = cnp.NPY_FLOAT32
    elif tn == cnp.NPY_FLOAT64:
        param_type[0] = cnp.NPY_FLOAT64
    else:
        raise ValueError("x must be float32, float64 or the uint16 words of float16/bfloat16")
    return tn
