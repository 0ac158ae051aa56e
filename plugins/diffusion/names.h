/* Member rename tables of names.c, named by the map entries of a part. */
#pragma once

enum {
        GH_DNAMES_SAME = 0,
        GH_DNAMES_UNET_RESNET,
        GH_DNAMES_VAE_RESNET,
        GH_DNAMES_VAE_ATTENTION,
        GH_DNAMES_MOTION, /* an AnimateDiff motion module's members */
};
