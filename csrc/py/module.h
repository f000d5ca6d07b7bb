/* module.h - what each type file registers into convirt._core. */
#ifndef CONVIRT_PY_MODULE_H
#define CONVIRT_PY_MODULE_H

#include <Python.h>

int cv_register_classify(PyObject *module);
int cv_register_contrastive_loss(PyObject *module);
int cv_register_encoder(PyObject *module);
int cv_register_image_augment(PyObject *module);
int cv_register_optimizer(PyObject *module);
int cv_register_linear_head(PyObject *module);

#endif
