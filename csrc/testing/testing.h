/* testing.h - what each file of convirt._testing adds to the module. */
#ifndef CONVIRT_TESTING_H
#define CONVIRT_TESTING_H

#include <Python.h>

int cv_testing_add_image_layers(PyObject *module);
int cv_testing_add_text_layers(PyObject *module);

#endif
