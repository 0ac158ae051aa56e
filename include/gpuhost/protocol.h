/* gpuhost protocol constants: the varlink interface, its error names, and
 * the default socket. The interface itself is described in
 * share/gpuhost/io.gpuhost.varlink. Self-contained; no internal types. */
#ifndef GPUHOST_PROTOCOL_H
#define GPUHOST_PROTOCOL_H

#define GH_INTERFACE "io.gpuhost"
#define GH_DEFAULT_SOCKET "/run/gpuhost/gpuhost.sock"
#define GH_SOCKET_ENV "GPUHOST_SOCKET"
#define GH_DEFAULT_MAX_MESSAGE_SIZE (1024 * 1024)

/* Errors of the io.gpuhost interface. */
#define GH_ERROR_INVALID_PARAMETER "io.gpuhost.InvalidParameter"
#define GH_ERROR_PROTOCOL "io.gpuhost.ProtocolError"
#define GH_ERROR_MESSAGE_TOO_LARGE "io.gpuhost.MessageTooLarge"
#define GH_ERROR_TOO_MANY_FDS "io.gpuhost.TooManyFileDescriptors"
#define GH_ERROR_TOO_MANY_CONNECTIONS "io.gpuhost.TooManyConnections"
#define GH_ERROR_PERMISSION_DENIED "io.gpuhost.PermissionDenied"
#define GH_ERROR_SHUTTING_DOWN "io.gpuhost.ShuttingDown"
#define GH_ERROR_CONFIG_INVALID "io.gpuhost.ConfigInvalid"
#define GH_ERROR_RELOAD_IN_PROGRESS "io.gpuhost.ReloadInProgress"
#define GH_ERROR_INTERNAL "io.gpuhost.InternalError"
#define GH_ERROR_MODEL_NOT_FOUND "io.gpuhost.ModelNotFound"
#define GH_ERROR_DEVICE_NOT_FOUND "io.gpuhost.DeviceNotFound"
#define GH_ERROR_MODEL_LOAD_FAILED "io.gpuhost.ModelLoadFailed"
#define GH_ERROR_MODEL_NOT_LOADED "io.gpuhost.ModelNotLoaded"
#define GH_ERROR_MODEL_IN_USE "io.gpuhost.ModelInUse"

/* Errors of the varlink service interface every varlink service offers. */
#define GH_VARLINK_SERVICE "org.varlink.service"
#define GH_VARLINK_INTERFACE_NOT_FOUND "org.varlink.service.InterfaceNotFound"
#define GH_VARLINK_METHOD_NOT_FOUND "org.varlink.service.MethodNotFound"
#define GH_VARLINK_METHOD_NOT_IMPLEMENTED "org.varlink.service.MethodNotImplemented"
#define GH_VARLINK_INVALID_PARAMETER "org.varlink.service.InvalidParameter"

#endif
