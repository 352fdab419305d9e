#include <gtest/gtest.h>

#include "core/dtype.h"

TEST(Smoke, Bf16) { EXPECT_EQ(dsv3::bf16_to_f32(dsv3::f32_to_bf16(1.5f)), 1.5f); }
