#!/usr/bin/perl
# Hash- and string-heavy, deterministic Perl workload (Debian's perl uses the
# system malloc). Builds big hashes of strings and arrays, sorts, rewrites
# with regexes, splits and joins, grows and shrinks big strings, deletes
# half of everything and rebuilds it. The printed result depends only on the
# seed: it must be identical with and without LD_PRELOAD=libarenalloc.so.
#
# Usage: alloc_heavy.pl [scale]   (scale 1 is the default size)
use strict;
use warnings;

my $scale = $ARGV[0] // 1;

# A small deterministic generator (no dependence on perl's rand()).
# A 31-bit LCG: every product fits in a 64-bit integer.
my $state = 20240601;
sub rnd {
    my ($n) = @_;
    $state = ($state * 1103515245 + 12345) % 2147483648;
    return ($state >> 8) % $n;
}

my @letters = ('a' .. 'z', 'A' .. 'Z', '0' .. '9');
sub word {
    my $len = 1 + rnd(14);
    return join '', map { $letters[rnd(scalar @letters)] } 1 .. $len;
}

my @vocab = map { word() } 1 .. 3000;
my $check = 0;
sub mix { $check = ($check * 31 + unpack('%32C*', $_[0])) % 4294967291; }

for my $round (1 .. 2 * $scale) {
    my %h;
    for my $i (1 .. 40000) {
        my $k = $vocab[rnd(3000)] . "-$round-$i";
        $h{$k} = [ map { $vocab[rnd(3000)] x (1 + rnd(4)) } 1 .. rnd(6) ];
    }
    # Sort by value length then key; join and checksum.
    my @keys = sort { scalar(@{ $h{$a} }) <=> scalar(@{ $h{$b} }) or $a cmp $b } keys %h;
    mix(join ',', @keys[0 .. 999]);
    mix(scalar @keys);

    # Build a big string, rewrite it with regexes, split it back.
    my $big = join "\n", map { "$_=" . join(';', @{ $h{$_} }) } @keys;
    (my $up = $big) =~ s/([a-m]+)/\U$1/g;
    $up =~ s/(\d+)/<$1>/g;
    mix(substr($up, 0, 20000));
    mix(length $up);
    my @lines = split /\n/, $up;
    my %count;
    $count{ length $_ }++ for @lines;
    mix(join ' ', map { "$_:$count{$_}" } sort { $a <=> $b } keys %count);

    # Grow a string by appending, then chop it down (realloc of big blocks).
    my $acc = '';
    $acc .= $vocab[rnd(3000)] x 50 while length($acc) < 4_000_000;
    substr($acc, 0, length($acc) / 2, '');
    mix(substr($acc, -5000));

    # Delete every other key, refill, nested hashes of hashes.
    my $n = 0;
    for my $k (@keys) { delete $h{$k} if $n++ % 2 }
    my %nested;
    for my $k (keys %h) {
        my $first = substr($k, 0, 1);
        $nested{$first}{$k} = { len => length $k, parts => [ split /-/, $k ] };
    }
    mix(join ',', map { "$_=" . scalar(keys %{ $nested{$_} }) } sort keys %nested);

    # sprintf / pack / unpack churn.
    my @packed = map { pack('N n a*', $_, $_ % 65536, $vocab[$_ % 3000]) } 1 .. 50000;
    my $sum = 0;
    for my $p (@packed) {
        my ($a, $b, $c) = unpack('N n a*', $p);
        $sum = ($sum + $a * 3 + $b + length $c) % 1000000007;
    }
    mix(sprintf '%d-%08x', $sum, $sum);
    print "round $round: keys ", scalar(@keys), " lines ", scalar(@lines), " check $check\n";
}
print "final check $check\n";
print "DONE\n";
