//! Sample data: a convenience-store catalogue, Chinese member names, phones, tags, birthdays.
//! Deterministic: member `n` is always the same person, so a rerun loads the same data.

/// SplitMix64: small, fast, good enough to make sample data look varied.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5eed_c0ff_ee00_d1e5)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True with probability `percent` %.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// One product of the catalogue.
#[derive(Clone, Copy, Debug)]
pub struct Product {
    pub sku: &'static str,
    pub name: &'static str,
    pub price_fen: i64,
}

macro_rules! catalogue {
    ($($sku:literal $name:literal $price:literal),* $(,)?) => {
        &[$(Product { sku: $sku, name: $name, price_fen: $price }),*]
    };
}

/// The chain's catalogue, created at s1 (prices in 分; SKUs are EAN-13 barcodes, 69 = China).
pub const catalogue: &[Product] = catalogue![
    // 咖啡 coffee
    "6921001000018" "美式咖啡 中杯" 1200,
    "6921001000025" "拿铁 中杯" 1800,
    "6921001000032" "卡布奇诺 中杯" 1800,
    "6921001000049" "摩卡 中杯" 2000,
    "6921001000056" "焦糖玛奇朵 大杯" 2400,
    "6921001000063" "生椰拿铁 大杯" 2200,
    "6921001000070" "燕麦拿铁 中杯" 2100,
    "6921001000087" "冷萃咖啡 大杯" 2200,
    "6921001000094" "澳白 小杯" 2000,
    "6921001000100" "冰美式 大杯" 1500,
    "6921001000117" "浓缩咖啡 双份" 1000,
    "6921001000124" "挂耳咖啡 10包" 3990,
    // 茶饮 tea
    "6921002000017" "珍珠奶茶 中杯" 1500,
    "6921002000024" "杨枝甘露 大杯" 1800,
    "6921002000031" "柠檬红茶 大杯" 1200,
    "6921002000048" "抹茶拿铁 中杯" 1900,
    "6921002000055" "桂花乌龙 中杯" 1500,
    "6921002000062" "芝士奶盖绿茶" 1800,
    "6921002000079" "红豆奶茶 中杯" 1500,
    "6921002000086" "满杯水果茶" 1800,
    "6921002000093" "茉莉花茶 袋泡20包" 2590,
    "6921002000109" "西柚茉莉 大杯" 1700,
    // 面包 bakery
    "6921003000016" "全麦吐司 400g" 1200,
    "6921003000023" "牛角面包" 900,
    "6921003000030" "肉松面包" 800,
    "6921003000047" "红豆面包" 600,
    "6921003000054" "菠萝包" 650,
    "6921003000061" "法式长棍" 1000,
    "6921003000078" "奶油餐包 6个" 1500,
    "6921003000085" "毛毛虫面包" 700,
    "6921003000092" "手撕面包" 1100,
    "6921003000108" "椰蓉面包" 700,
    "6921003000115" "芝士奶酪包" 900,
    "6921003000122" "蛋黄酥 4个" 2200,
    // 甜点 desserts
    "6921004000015" "芝士蛋糕" 2800,
    "6921004000022" "提拉米苏" 3200,
    "6921004000039" "葡式蛋挞 2个" 1200,
    "6921004000046" "瑞士卷" 1500,
    "6921004000053" "黑森林蛋糕" 3500,
    "6921004000060" "戚风蛋糕" 1800,
    "6921004000077" "马卡龙 3个" 2400,
    "6921004000084" "奶油泡芙" 800,
    // 乳品 dairy
    "6921005000014" "纯牛奶 250ml" 350,
    "6921005000021" "全脂牛奶 1L" 1290,
    "6921005000038" "低脂牛奶 1L" 1350,
    "6921005000045" "原味酸奶 200g" 650,
    "6921005000052" "草莓酸奶 200g" 750,
    "6921005000069" "希腊酸奶 135g" 990,
    "6921005000076" "燕麦奶 1L" 1990,
    "6921005000083" "原味豆浆 300ml" 350,
    "6921005000090" "儿童奶酪棒 10支" 1990,
    "6921005000106" "无盐黄油 200g" 2590,
    // 零食 snacks
    "6921006000013" "薯片 原味 75g" 790,
    "6921006000020" "薯片 黄瓜味 75g" 790,
    "6921006000037" "五香牛肉干 100g" 2990,
    "6921006000044" "每日坚果 7袋装" 3990,
    "6921006000051" "海苔 原味" 1290,
    "6921006000068" "苏打饼干" 690,
    "6921006000075" "黑巧克力 100g" 1590,
    "6921006000082" "话梅" 890,
    "6921006000099" "焦糖瓜子 250g" 1190,
    "6921006000105" "辣条" 350,
    "6921006000112" "果冻 6杯装" 990,
    "6921006000129" "芒果干 100g" 1590,
    "6921006000136" "猪肉脯 100g" 2590,
    "6921006000143" "鱿鱼丝" 1990,
    // 饮料 drinks
    "6921007000012" "矿泉水 550ml" 200,
    "6921007000029" "苏打水 410ml" 450,
    "6921007000036" "可乐 330ml" 300,
    "6921007000043" "柠檬汽水 330ml" 300,
    "6921007000050" "鲜榨橙汁 1L" 1290,
    "6921007000067" "椰子水 330ml" 990,
    "6921007000074" "运动饮料 600ml" 550,
    "6921007000081" "无糖乌龙茶 500ml" 450,
    "6921007000098" "冰红茶 500ml" 350,
    "6921007000104" "绿茶 500ml" 350,
    "6921007000111" "白桃气泡水 480ml" 550,
    "6921007000128" "功能饮料 250ml" 600,
    // 速食 ready meals
    "6921008000011" "红烧牛肉面 桶装" 450,
    "6921008000028" "自热小火锅" 2990,
    "6921008000035" "三鲜水饺 1kg" 2590,
    "6921008000042" "黑芝麻汤圆 500g" 1590,
    "6921008000059" "螺蛳粉" 1390,
    "6921008000066" "酸辣粉" 990,
    "6921008000073" "午餐肉罐头 340g" 1590,
    "6921008000080" "火腿肠 10支" 990,
    "6921008000097" "关东煮 5串" 1200,
    "6921008000103" "金枪鱼饭团" 650,
    "6921008000110" "鸡蛋火腿三明治" 1200,
    "6921008000127" "照烧鸡腿便当" 2290,
    // 生鲜 fresh
    "6921009000010" "香蕉 500g" 590,
    "6921009000027" "红富士苹果 1kg" 1290,
    "6921009000034" "赣南脐橙 1kg" 1290,
    "6921009000041" "土鸡蛋 10枚" 1290,
    "6921009000058" "圣女果 500g" 1290,
    "6921009000065" "蓝莓 125g" 1990,
    "6921009000072" "丹东草莓 500g" 2990,
    "6921009000089" "麒麟西瓜 半个" 1990,
    "6921009000096" "阳光玫瑰葡萄 500g" 2590,
    "6921009000102" "猕猴桃 6个" 1590,
    // 日用 household
    "6921010000016" "抽纸 3包" 1590,
    "6921010000023" "湿巾 80抽" 990,
    "6921010000030" "牙膏 120g" 1290,
    "6921010000047" "软毛牙刷 2支" 990,
    "6921010000054" "洗手液 500ml" 1590,
    "6921010000061" "洗发水 400ml" 3990,
    "6921010000078" "沐浴露 750ml" 3590,
    "6921010000085" "洗衣液 2kg" 2990,
    "6921010000092" "垃圾袋 3卷" 890,
    "6921010000108" "保鲜膜 30m" 1190,
    // 粮油调味 staples
    "6921011000015" "东北大米 5kg" 3990,
    "6921011000022" "花生油 5L" 7990,
    "6921011000039" "生抽 500ml" 1290,
    "6921011000046" "山西老陈醋 500ml" 990,
    "6921011000053" "食用盐 400g" 300,
    "6921011000060" "绵白糖 400g" 690,
    "6921011000077" "龙须挂面 1kg" 590,
    "6921011000084" "鸡精 200g" 890,
];

/// Local specialities each of the other two stores adds to the shared catalogue.
pub const specialities: [(&str, &[Product]); 2] = [
    (
        "s2",
        catalogue![
            "6933001000011" "西湖龙井 250g" 16800,
            "6933001000028" "杭州藕粉 500g" 3990,
            "6933001000035" "定胜糕 4个" 1200,
            "6933001000042" "葱包桧" 800,
            "6933001000059" "片儿川 (速食)" 1590,
        ],
    ),
    (
        "s3",
        catalogue![
            "6911001000019" "稻香村糕点礼盒" 9800,
            "6911001000026" "北京烤鸭礼盒" 12800,
            "6911001000033" "驴打滚" 1500,
            "6911001000040" "豌豆黄" 1200,
            "6911001000057" "北冰洋汽水 248ml" 500,
        ],
    ),
];

/// The catalogue item with this name (the scenario buys named things).
pub fn product(name: &str) -> Option<Product> {
    catalogue.iter().copied().find(|p| p.name == name)
}

const surnames: [&str; 60] = [
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭",
    "何", "林", "高", "罗", "郑", "梁", "谢", "宋", "唐", "许", "韩", "冯", "邓", "曹", "彭", "曾",
    "肖", "田", "董", "袁", "潘", "蒋", "蔡", "余", "杜", "叶", "程", "苏", "魏", "吕", "丁", "沈",
    "姚", "卢", "姜", "崔", "钟", "谭", "陆", "汪", "范", "金", "石", "欧阳",
];
const female: [&str; 30] = [
    "芳", "娜", "敏", "静", "丽", "艳", "娟", "霞", "婷", "雪", "琳", "慧", "颖", "欣", "怡", "佳",
    "雨", "思", "梦", "晓", "玉", "兰", "红", "萍", "秀", "倩", "悦", "涵", "诗", "语",
];
const male: [&str; 30] = [
    "伟", "强", "磊", "军", "洋", "勇", "杰", "涛", "明", "超", "刚", "平", "辉", "鹏", "飞", "亮",
    "浩", "宇", "轩", "俊", "博", "文", "建", "国", "华", "海", "波", "斌", "凯", "峰",
];
/// Mobile prefixes of the three operators (not 170/171: the scenario uses those).
const phone_prefixes: [&str; 20] = [
    "139", "138", "137", "136", "135", "134", "150", "151", "152", "158", "159", "182", "187",
    "188", "130", "131", "186", "133", "153", "189",
];
const tag_pool: [&str; 10] = [
    "VIP",
    "咖啡控",
    "学生",
    "上班族",
    "宝妈",
    "烘焙爱好者",
    "早餐党",
    "健身达人",
    "夜猫子",
    "团购",
];
const notes: [&str; 6] = [
    "偏爱燕麦奶",
    "乳糖不耐受",
    "常买早餐套餐",
    "生日当月送蛋糕券",
    "喜欢少糖",
    "企业团购联系人",
];
/// Streets near each store, for addresses.
const streets: [(&str, [&str; 4]); 3] = [
    ("上海市黄浦区", ["南京东路", "九江路", "福州路", "西藏中路"]),
    ("杭州市西湖区", ["北山街", "曙光路", "文三路", "龙井路"]),
    (
        "北京市东城区",
        ["王府井大街", "东单北大街", "金鱼胡同", "灯市口大街"],
    ),
];

/// The `n`th sample member, registered at store number `home` (0..3).
pub fn member(n: usize, home: usize) -> serde_json::Value {
    let mut rng = Rng::new(n as u64 * 7 + 1);
    let is_female = rng.chance(55);
    let pool: &[&str] = if is_female { &female } else { &male };
    let mut name = rng.pick(&surnames).to_owned();
    name.push_str(rng.pick(pool));
    if rng.chance(70) {
        name.push_str(rng.pick(pool));
    }
    // 48271 is prime and coprime to 10^8, so n ↦ digits is one-to-one: phones never repeat.
    let digits = (n as u64 * 48_271 + 12_345_678) % 100_000_000;
    let phone = format!("{}{digits:08}", phone_prefixes[n % phone_prefixes.len()]);
    let mut body = serde_json::json!({ "name": name, "phone": phone });
    if rng.chance(80) {
        body["gender"] = (if is_female { "female" } else { "male" }).into();
    }
    if rng.chance(60) {
        body["birthday"] = format!(
            "{}-{:02}-{:02}",
            1958 + rng.below(50),
            1 + rng.below(12),
            1 + rng.below(28)
        )
        .into();
    }
    if rng.chance(45) {
        let mut tags = vec![rng.pick(&tag_pool)];
        if rng.chance(40) {
            let other = rng.pick(&tag_pool);
            if !tags.contains(&other) {
                tags.push(other);
            }
        }
        body["tags"] = tags.into();
    }
    if rng.chance(30) {
        let (city, roads) = streets[home % streets.len()];
        body["address"] = format!("{city}{}{}号", rng.pick(&roads), 1 + rng.below(300)).into();
    }
    if rng.chance(10) {
        body["note"] = rng.pick(&notes).into();
    }
    body
}

#[cfg(test)]
mod tests {
    #[test]
    fn barcodes_have_valid_check_digits() {
        let all = super::catalogue
            .iter()
            .chain(super::specialities.iter().flat_map(|(_, list)| list.iter()));
        for product in all {
            let digits: Vec<u32> = product.sku.chars().filter_map(|c| c.to_digit(10)).collect();
            assert_eq!(digits.len(), 13, "{}", product.sku);
            let sum: u32 = digits[..12]
                .iter()
                .enumerate()
                .map(|(i, d)| if i % 2 == 0 { *d } else { d * 3 })
                .sum();
            assert_eq!((10 - sum % 10) % 10, digits[12], "{}", product.sku);
        }
    }
}
